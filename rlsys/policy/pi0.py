"""``pi0`` / ``pi05``: transformers' ``PI0ForConditionalGeneration`` / ``PI05ForConditionalGeneration``
as rlsys policy models (see rlsys.policy.model), integrated by rlsys's samplers.

``encode`` turns the observation into the model's prefix (each camera resized to the vision tower's
input and scaled to [-1, 1], its image tokens, then the prompt; pi0.5 appends the robot state,
discretised into 256 bins, and "Action: " to the prompt) and runs the vision-language model once per
chunk into its KV cache. ``velocity`` runs the action expert on ``x`` at flow time ``t`` against that
cache. The time convention is rlsys's (``t = 1`` noise, ``t = 0`` action; ``v`` predicts
``eps - a``), so ``flow.transition`` and the samplers apply unchanged.

The prefix cache is read, never written: every ``velocity`` call works on a view whose layers point
at the prefix tensors (``prefix_view``), so the denoising steps of a chunk, and a learner's recompute
of any subset of its rows, all attend to the same prefix. transformers changes its cache API between
minor versions (hence the exact pin in the ``vla`` extra); the cache handling lives in
``prefix_view`` and ``cat_caches`` alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.nn import functional as F

from rlsys.config import PolicyConfig
from rlsys.policy.model import PolicyModel
from rlsys.policy.spec import read_model_config
from rlsys.prompt import PromptTokenizer
from rlsys.types import ContractError

STATE_BINS = 256  # pi0.5's state discretisation (the prompt's "State: ..." numbers)


def prefix_view(cache: Any, rows: torch.Tensor | None = None) -> Any:
    """A cache whose layers hold the prefix's key/value tensors (``rows`` of the batch only, where
    given). Appending to the view (the action expert's forward does) rebinds the view's tensors and
    leaves ``cache`` as it was."""
    view = copy.copy(cache)
    view.layers = []
    for layer in cache.layers:
        lv = copy.copy(layer)
        if rows is not None and layer.is_initialized:
            lv.keys, lv.values = layer.keys[rows], layer.values[rows]
        view.layers.append(lv)
    return view


def cat_caches(caches: list[Any]) -> Any:
    """One cache from the caches of consecutive row blocks (the same prefix length)."""
    out = prefix_view(caches[0])
    for i, layer in enumerate(out.layers):
        if layer.is_initialized:
            layer.keys = torch.cat([c.layers[i].keys for c in caches])
            layer.values = torch.cat([c.layers[i].values for c in caches])
    return out


@dataclass
class PI0Context:
    """The encoded prefix of a batch: the vision-language model's last hidden states ``tokens``
    [B, N, W] with ``mask`` [B, N] (True = attended), their masked mean ``pooled`` [B, W], the KV
    ``cache`` and the normalised, zero-padded robot ``state`` [B, D] (pi0's state token)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    cache: Any
    state: torch.Tensor

    def index(self, rows: torch.Tensor) -> PI0Context:
        return PI0Context(self.tokens[rows], self.mask[rows], self.pooled[rows], prefix_view(self.cache, rows),
                          self.state[rows])


class PI0(PolicyModel):
    """pi0: the state enters the action expert as a token (``state_proj``)."""

    config_class: Any = transformers.PI0Config
    model_class: Any = transformers.PI0ForConditionalGeneration
    state_in_prompt = False
    part_prefixes = {"vision": ("net.model.vlm.vision_tower.", "net.model.vlm.multi_modal_projector."),
                     "language": ("net.model.vlm.",),
                     "expert": ("net.model.dit.", "net.embed_action_time.", "net.action_out_proj.")}

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        spec = read_model_config(cfg)
        spec.pop("model_type", None)
        spec.pop("transformers_version", None)
        self.net = self.model_class(self.config_class(**spec))
        self.net.eval()  # no dropout: rollout and recompute see the same function
        # pi0's expert reads embeddings, never token ids: its vocabulary table (0.26B parameters at the
        # real size, the checkpoints' lm_head) never gets a gradient, so it never trains nor travels
        table = getattr(self.net.model.dit, "embed_tokens", None)
        if table is not None:
            table.requires_grad_(False)
        c = self.net.config
        vision = c.vlm_config.vision_config
        self.image_size = int(vision.image_size)
        self.tokens_per_image = (self.image_size // int(vision.patch_size)) ** 2
        self.image_token = int(c.vlm_config.image_token_id)
        self.horizon, self.channels = int(c.chunk_size), int(c.max_action_dim)
        self.width = int(c.vlm_config.text_config.hidden_size)
        self.feature_width = int(c.dit_config.hidden_size)
        self.max_tokens = cfg.max_tokens
        self.state_dim = int(getattr(c, "max_state_dim", 0))
        self.tokenizer = PromptTokenizer(cfg) if self.state_in_prompt else None

    # ------------------------------------------------------------------ prefix
    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S, 3] in [0, 1] -> [B, C, 3, s, s] in [-1, 1] at the vision tower's size s."""
        b, c = images.shape[:2]
        x = images.flatten(0, 1).permute(0, 3, 1, 2)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return (x * 2.0 - 1.0).reshape(b, c, 3, self.image_size, self.image_size)

    def prompt(self, tokens: torch.Tensor, token_mask: torch.Tensor, state: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's ids and mask [B, L] (pi0: as the observation brings them)."""
        return tokens, token_mask

    def state_input(self, proprio: torch.Tensor) -> torch.Tensor:
        """Normalised proprio [B, P] -> the model's state [B, max_state_dim] (zero-padded)."""
        if proprio.shape[1] > self.state_dim:
            raise ContractError(f"proprio has {proprio.shape[1]} dims; pi0's max_state_dim is {self.state_dim}")
        return F.pad(proprio, (0, self.state_dim - proprio.shape[1]))

    def encode(self, inputs: dict[str, torch.Tensor]) -> PI0Context:
        images = inputs["images"]
        b, cams = images.shape[:2]
        ids, mask = self.prompt(inputs["tokens"], inputs["token_mask"], inputs["proprio"])
        image_ids = torch.full((b, cams * self.tokens_per_image), self.image_token, dtype=ids.dtype, device=ids.device)
        ids = torch.cat([image_ids, ids], 1)
        attention = torch.cat([torch.ones_like(image_ids), mask.long()], 1)
        inner = self.net.model
        embeds = inner.embed_prefix(ids, self.pixels(images).to(self.net.dtype),
                                    torch.ones(b, cams, dtype=torch.bool, device=ids.device))
        out = inner.vlm(inputs_embeds=embeds, attention_mask=attention, position_ids=attention.cumsum(-1) - 1,
                        token_type_ids=torch.zeros_like(ids), use_cache=True)
        hidden = out.last_hidden_state
        m = attention[..., None].to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        state = self.state_input(inputs["proprio"]) if self.state_dim else inputs["proprio"]
        return PI0Context(hidden, attention.bool(), pooled, out.cache, state)

    def cat(self, contexts: list[PI0Context]) -> PI0Context:
        def join(field: str) -> torch.Tensor:
            return torch.cat([getattr(c, field) for c in contexts])

        return PI0Context(join("tokens"), join("mask"), join("pooled"), cat_caches([c.cache for c in contexts]),
                          join("state"))

    # ------------------------------------------------------------------ action expert
    def action_embeds(self, context: PI0Context, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"action_embeds": self.net.embed_action_time(context.state, x, t)}

    def velocity(self, context: PI0Context, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v(x, t) [M, H, K] and the expert's last hidden states [M, H, F], against ``context`` (M rows)."""
        x = x.to(self.net.dtype)
        out = self.net.model(**self.action_embeds(context, x, t), attention_mask=context.mask.long(),
                             cache=prefix_view(context.cache))
        features = out.last_hidden_state[:, -self.horizon:]
        return self.net.action_out_proj(features), features


    # ------------------------------------------------------------------ pretrained weights
    def load_pretrained(self, folder: str | Path) -> dict[str, list[str]]:
        """The weights of a local pretrained folder (transformers' key names, or LeRobot / openpi's
        ``paligemma_with_expert.*`` names through transformers' conversion mapping), into this model.
        -> {"missing": [...], "unexpected": [...]} as transformers reports them."""
        loaded, info = self.model_class.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32,
                                                        output_loading_info=True)
        self.net.load_state_dict(loaded.state_dict())
        return {k: sorted(info.get(f"{k}_keys", [])) for k in ("missing", "unexpected")}


class PI05(PI0):
    """pi0.5: no state token; the state, discretised into 256 bins over [-1, 1], is part of the
    prompt ("Task: ..., State: 12 200 ...;\\nAction: "), and the time conditions the expert through
    adaptive RMS norms."""

    config_class: Any = transformers.PI05Config
    model_class: Any = transformers.PI05ForConditionalGeneration
    state_in_prompt = True

    def prompt(self, tokens: torch.Tensor, token_mask: torch.Tensor, state: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.tokenizer is not None
        edges = torch.linspace(-1, 1, STATE_BINS + 1, device=state.device)[:-1]
        bins = (torch.bucketize(state.float().clamp(-1, 1), edges, right=True) - 1).tolist()
        ids = torch.zeros_like(tokens)
        mask = torch.zeros_like(token_mask)
        for i, row in enumerate(bins):
            task = tokens[i][token_mask[i]].tolist()
            tail = self.tokenizer.ids(f", State: {' '.join(map(str, row))};\nAction: ", special=False)
            full = task + tail
            if len(full) > self.max_tokens:
                raise ContractError(f"pi0.5 prompt of {len(full)} tokens (task {len(task)}, state {len(tail)}) > "
                                    f"policy.max_tokens {self.max_tokens}: raise policy.max_tokens")
            ids[i, : len(full)] = torch.tensor(full, dtype=tokens.dtype)
            mask[i, : len(full)] = True
        return ids, mask

    def action_embeds(self, context: PI0Context, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        action, time = self.net.embed_action_time(x, t)
        return {"action_embeds": action, "timestep_embeds": time}
