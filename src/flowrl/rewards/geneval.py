"""`geneval`: GenEval's verdict, by rule, on the compositional world of flowrl.data.geneval.

GenEval (Ghosh et al. 2023) detects objects, then checks what the prompt's category implies: the
objects are there (single_object, two_object), their number is exact (counting), their colour is
the named one (colors, color_attr), and their boxes stand in the named relation (position). A
prompt scores 1 only if every check passes, else 0; the benchmark's number is the mean over
categories of the per-category accuracy. Here the detector is exact, because the world's images
are flat palette colours on a black background:

  1. snap every pixel to the nearest of background + palette colours;
  2. objects = 4-connected components of one colour (scipy.ndimage.label, all images and one
     colour per call) of at least `min_area` pixels (smaller ones are specks, not objects);
  3. shape of a component from its bounding box: aspect = h / w reads a wide bar (< 1/ASPECT_SPLIT),
     a square, or a tall pillar (> ASPECT_SPLIT = sqrt 2, the geometric midpoint between the
     renderer's aspects 1/2, 1 and 2); a component filling less than MIN_FILL of its box, or
     longer than MAX_ELONGATION to 1, is no object. The renderer's own rectangles (half-size >= 4
     px at any sub-pixel position) measure fill 1 and aspect 0.44..0.63 (bar), 0.89..1.13
     (square), 1.6..2.25 (pillar). The bands are wide on purpose, like the confidence threshold of
     GenEval's detector: a ragged blob of about the right proportions counts, so a weak model's
     drawings earn partial credit for RL to build on;
  4. the category's rule (flowrl.data.geneval's table), with GenEval's relation test on box
     centres (`relations`: POSITION_THRESHOLD = 0.1 of the two boxes' sizes discounted from the
     offset, then a relation holds when its axis carries more than half of the offset).

As GenEval reads its detector's top-scoring box of a class for colour and position, this
verifier reads the largest object of a named shape (`top`): "a purple square" holds when the
largest square is purple, whatever smaller squares of other colours lie about (a weak model's
stray fragments), and a position holds between the largest object of each named shape, each in
its named colour. Counting counts every object of the shape, as GenEval does, and (the prompt
naming a colour, which GenEval's do not) each must carry it.

Two scores (`score`): "strict", GenEval's verdict above (the benchmark's number, and what
`category_scores` always reports), and "partial", the training reward of Flow-GRPO's GenEval
setup: its reward server's `evaluate_reward` (yifan123/reward-server reward_server/gen_eval.py
@92ac29f, which flow_grpo's scripts/train_sd3.py trains on as `scores`), the mean of one term per
check, so an image that passes some checks earns part of the reward (`partial_score`).

`components()` is {"geneval": score}: the training path keys per-reward weights by component
name (flowrl.contract.advantages), so per-category numbers come from `category_scores` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flowrl.data.geneval import BACKGROUND, CATEGORIES, COLORS, Spec, parse
from flowrl.rewards.base import RewardModel, check_batch

PALETTE_NAMES: tuple[str | None, ...] = (None, *COLORS)  # index 0: the background
POSITION_THRESHOLD = 0.1  # GenEval's evaluate_images.py
CHUNK = 256  # images per label() call: bounds the [chunk, H, W] int32 label volume

# Shape bands (see the module docstring for the renderer's measured ranges).
ASPECT_SPLIT = 2**0.5  # bar | square | pillar boundaries at aspect 1/sqrt 2 and sqrt 2
MIN_FILL = 0.5  # below: a scatter, a ring or an L, not one of the world's filled rectangles
MAX_ELONGATION = 4.0  # beyond 4:1 a line, not an object


@dataclass(frozen=True)
class Detection:
    """One object found in an image: colour, shape, its bounding box (px, end exclusive) and its
    pixel count (which object is a shape's `top`)."""

    color: str
    shape: str
    x0: int
    y0: int
    x1: int
    y1: int
    area: int = 0


def palette_labels(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] (any float dtype) -> [B, H, W] int index into PALETTE_NAMES."""
    palette = torch.tensor([BACKGROUND, *COLORS.values()], dtype=torch.float32, device=images.device)
    # |px - c|^2 = |px|^2 - 2 px.c + |c|^2, and |px|^2 is the same for every c: one small matmul
    # instead of a [B, H, W, K, 3] difference tensor
    b, _, h, w = images.shape
    px = images.float().permute(0, 2, 3, 1).reshape(-1, 3)
    dist = torch.addmm(palette.square().sum(-1), px, palette.T, alpha=-2)  # [B H W, K] up to |px|^2
    return dist.argmin(-1).to(torch.uint8).view(b, h, w).cpu().numpy()


def classify(fill: float, aspect: float) -> str | None:
    """The shape a component's box reads as (fill = area / box, aspect = h / w), or None."""
    if fill < MIN_FILL or not 1 / MAX_ELONGATION <= aspect <= MAX_ELONGATION:
        return None
    return "bar" if aspect < 1 / ASPECT_SPLIT else "pillar" if aspect > ASPECT_SPLIT else "square"


def detect(images: torch.Tensor, min_area: int = 16) -> list[list[Detection]]:
    """The objects of each image (step 1-3 of the module docstring), per image in label order."""
    from scipy import ndimage  # lazy, as flowrl.rewards.shapes

    out: list[list[Detection]] = [[] for _ in range(images.shape[0])]
    # One 3-D label() per colour over a chunk of images: the structure connects pixels within an
    # image (4-neighbourhood) and never across the batch axis.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    for start in range(0, images.shape[0], CHUNK):
        labels = palette_labels(images[start : start + CHUNK])
        for k in range(1, len(PALETTE_NAMES)):
            comp, n = ndimage.label(labels == k, structure=structure)
            if n == 0:
                continue
            area = np.bincount(comp.ravel(), minlength=n + 1)[1:]  # [n] pixels per component
            for i, (sb, sy, sx) in enumerate(ndimage.find_objects(comp)):
                if area[i] < min_area:
                    continue
                h, w = sy.stop - sy.start, sx.stop - sx.start
                shape = classify(area[i] / (h * w), h / w)
                if shape is not None:
                    out[start + sb.start].append(
                        Detection(PALETTE_NAMES[k], shape, sx.start, sy.start, sx.stop, sy.stop, int(area[i]))
                    )
    return out


def relations(a: Detection, b: Detection) -> set[str]:
    """Where a is relative to b, GenEval's `relative_position` on the two bounding boxes: the
    centre offset, shrunk per axis by POSITION_THRESHOLD x the boxes' summed extent, normalised
    by the offset's length; "left of" when its x part < -0.5 ... (image y grows downwards)."""
    ca = np.array([(a.x0 + a.x1) / 2, (a.y0 + a.y1) / 2])
    cb = np.array([(b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2])
    dims = np.array([a.x1 - a.x0 + b.x1 - b.x0, a.y1 - a.y0 + b.y1 - b.y0], dtype=float)
    offset = ca - cb
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    return {
        rel for rel, holds in (("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5), ("below", dy > 0.5)) if holds
    }


def top(objects: list[Detection], shape: str) -> Detection | None:
    """The object GenEval's checks read for a class: here the largest of that shape (ties: the first)."""
    found = [d for d in objects if d.shape == shape]
    return max(found, key=lambda d: d.area) if found else None


def correct(spec: Spec, objects: list[Detection]) -> bool:
    """GenEval's verdict for one image: every check of the prompt's category passes."""
    cat, objs = spec.category, spec.objects
    if cat == "counting":
        (o,) = objs
        found = [d for d in objects if d.shape == o.shape]
        return len(found) == o.count and all(d.color == o.color for d in found)
    tops = [top(objects, o.shape) for o in objs]
    if any(t is None or (o.color is not None and t.color != o.color) for t, o in zip(tops, objs)):
        return False
    return cat != "position" or spec.relation in relations(*tops)


def partial_score(spec: Spec, objects: list[Detection]) -> float:
    """Flow-GRPO's partial GenEval reward (reward-server gen_eval.py `evaluate_reward`) on this
    world: the mean of one term per check, in the server's order and with its rules
      - per named object: a presence term, 1 - |n - count| / count for counting (negative past
        twice the count, as the server's), else 1 when the shape is found at all (the world's
        verdict reads the largest object, GenEval's top box, so one is enough);
      - found as asked: its colour term, 1 - |n_colour - count| / count (counting: every object of
        the shape; otherwise the largest one's colour, 1 or 0); not found: one 0 for the colour or
        relation it would have been checked on;
      - the relation's subject (objects[0], checked after objects[1], its reference, as GenEval's
        metadata lists them), found and in its colour: 1 when the relation holds; when it does
        not, 0 and then 1 (the server appends 1.0 after its relation loop whether or not the loop
        failed: kept, it is the reward Flow-GRPO trained on); 0 when the reference was not matched.
    Equals 1 exactly when `correct` holds (tests/rewards/test_geneval_reward.py)."""
    cat = spec.category
    # the server walks GenEval's metadata order: a position prompt lists the reference first
    order = (1, 0) if cat == "position" else tuple(range(len(spec.objects)))
    terms: list[float] = []
    matched: dict[int, Detection | None] = {}
    for i in order:
        o = spec.objects[i]
        found = [d for d in objects if d.shape == o.shape]
        checks_more = o.color is not None or (cat == "position" and i == 0)
        if cat == "counting":
            terms.append(1 - abs(o.count - len(found)) / o.count)
            ok = len(found) == o.count
        else:
            terms.append(float(bool(found)))
            ok = bool(found)
        if not ok:
            if checks_more:
                terms.append(0.0)
            matched[i] = None
            continue
        largest = top(found, o.shape)
        if o.color is not None:
            if cat == "counting":
                n_color = sum(d.color == o.color for d in found)
            else:
                n_color = int(largest.color == o.color)
            terms.append(1 - abs(o.count - n_color) / o.count)
            ok = n_color == o.count
        if cat == "position" and i == 0 and ok:
            ref = matched.get(1)
            if ref is None:
                terms.append(0.0)
                ok = False
            else:
                if spec.relation not in relations(largest, ref):
                    terms.append(0.0)
                    ok = False
                terms.append(1.0)  # the server's unconditional append after its relation loop
        matched[i] = largest if ok else None
    return sum(terms) / len(terms)


class GenEvalReward(RewardModel):
    """score "strict": 1 if the image passes every check of its prompt's GenEval category, else 0;
    "partial": Flow-GRPO's training reward, the mean of the checks' terms (`partial_score`)."""

    name = "geneval"

    def __init__(self, min_area: int = 16, score: str = "strict"):
        super().__init__()
        if score not in ("strict", "partial"):
            raise ValueError(f"reward geneval: score must be strict or partial, got {score!r}")
        self.min_area = min_area
        self.mode = score

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self._judge(images, prompts, correct if self.mode == "strict" else partial_score)

    def verdicts(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """[B] GenEval's strict verdict (1 / 0) whatever `score` is: what its accuracies count."""
        if self.mode == "strict":
            return self(images, prompts)
        check_batch(images, prompts)
        return self._judge(images, prompts, correct)

    def _judge(self, images: torch.Tensor, prompts: list[str], rule) -> torch.Tensor:
        """[B] rule(spec, detections) per image."""
        specs = [parse(p) for p in prompts]  # first: a prompt outside the world fails before any work
        found = detect(images, self.min_area)
        return torch.tensor([float(rule(s, objs)) for s, objs in zip(specs, found, strict=True)])

    def category_scores(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """{category: [B]}: an image's strict verdict under its prompt's category, NaN under the
        others (so nanmean gives the category's accuracy in this batch; `summarize` does): GenEval's
        accuracies, with either `score`."""
        scores, cats = self.verdicts(images, prompts), self.categories(prompts)
        return {c: torch.where(torch.tensor([x == c for x in cats]), scores, torch.nan) for c in CATEGORIES}

    def categories(self, prompts: list[str]) -> list[str]:
        """Each prompt's GenEval category (what per-category accuracies group scores by)."""
        return [parse(p).category for p in prompts]


def summarize(category_scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-category accuracy and GenEval's `overall`: their mean over the categories present."""
    acc = {c: s.nanmean().item() for c, s in category_scores.items() if not s.isnan().all()}
    return acc | {"overall": float(np.mean(list(acc.values())))} if acc else {}
