"""Procedural frontal chest radiographs whose content is fixed by a findings state.

Everything is drawn analytically on a normalised grid (u = column, v = row, both in [0, 1]) with soft
edges, so one image is a few dozen vectorised numpy operations (hundreds of images per second per core)
and looks the same at 64 and at 512 pixels. Brightness follows radiographic convention: air is dark,
soft tissue and fluid are bright, devices brightest. The patient's right is on the image's left.

Sizes are chosen to stay clearly visible at 64 px: a small effusion rises >= 5 px above the
costophrenic angle, a small pneumothorax is a >= 3 px dark rim, a focal opacity has a ~3 px sigma.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLUID = 0.70
DEVICE = 0.97
HEART = 0.74
CTR_NORMAL = (0.38, 0.44)  # cardiothoracic ratio of a normal heart
CTR_ENLARGED = {"mild": (0.58, 0.62), "moderate": (0.64, 0.68)}
EFFUSION_HEIGHT = {"small": 0.13, "moderate": 0.19, "large": 0.27}
PTX_DEPTH = {"small": 0.055, "moderate": 0.09}
EDEMA_GAIN = {"mild": 0.21, "moderate": 0.29}
OPACITY_LEVEL = {"upper": 0.22, "mid": 0.45, "lower": 0.66}  # fraction of apex-to-dome height


@dataclass(frozen=True)
class Anatomy:
    """A patient's body: constant across the patient's studies."""

    cx: float  # thorax centre line
    half_width: float  # thorax half width W (lung outer edges at cx -/+ W)
    lung_top: float
    dome: float  # level of the (left) hemidiaphragm dome
    mediastinum: float  # mediastinum half width m
    heart_height: float
    heart_shift: float  # heart centre lies right of the midline on the image (patient's left)
    ctr: float  # normal cardiothoracic ratio of this patient
    body: float  # soft-tissue brightness
    lung: float  # aerated-lung brightness
    marking_phase: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Anatomy":
        return cls(
            cx=0.5 + rng.normal(0, 0.008),
            half_width=rng.uniform(0.36, 0.40),
            lung_top=rng.uniform(0.11, 0.15),
            dome=rng.uniform(0.72, 0.77),
            mediastinum=rng.uniform(0.055, 0.07),
            heart_height=rng.uniform(0.11, 0.13),
            heart_shift=rng.uniform(0.03, 0.05),
            ctr=rng.uniform(*CTR_NORMAL),
            body=rng.uniform(0.50, 0.58),
            lung=rng.uniform(0.14, 0.20),
            marking_phase=rng.uniform(0, 2 * np.pi),
        )

    def lung_box(self, side: str) -> tuple[float, float, float, float]:
        """(centre x, half width, apex y, dome y) of one lung; side is the patient's side."""
        sign = -1.0 if side == "right" else 1.0
        half = (self.half_width - self.mediastinum) / 2
        centre = self.cx + sign * (self.mediastinum + half)
        dome = self.dome - (0.02 if side == "right" else 0.0)  # the right dome sits higher
        return centre, half, self.lung_top, dome

    def heart_box(self, ctr: float) -> tuple[float, float, float, float]:
        """(centre x, centre y, half width, half height) of the heart for a cardiothoracic ratio."""
        height = self.heart_height * (1.0 + 0.8 * (ctr - 0.42))
        return self.cx + self.heart_shift, self.dome - height * 0.9, ctr * self.half_width, height


@dataclass(frozen=True)
class Jitter:
    """Per-study acquisition variation: small affine transform, noise and exposure."""

    angle: float
    scale: float
    shift: tuple[float, float]
    noise: float
    contrast: float
    brightness: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Jitter":
        return cls(
            angle=float(np.deg2rad(rng.uniform(-3, 3))),
            scale=rng.uniform(0.96, 1.04),
            shift=(rng.uniform(-0.025, 0.025), rng.uniform(-0.025, 0.025)),
            noise=rng.uniform(0.01, 0.025),
            contrast=rng.uniform(0.9, 1.1),
            brightness=rng.uniform(-0.04, 0.04),
        )

    def to_anatomy(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates -> anatomy coordinates (the inverse of `to_image`)."""
        du, dv = u - 0.5 - self.shift[0], v - 0.5 - self.shift[1]
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return 0.5 + (cos * du + sin * dv) / self.scale, 0.5 + (-sin * du + cos * dv) / self.scale

    def to_image(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        du, dv = (u - 0.5) * self.scale, (v - 0.5) * self.scale
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return 0.5 + cos * du - sin * dv + self.shift[0], 0.5 + sin * du + cos * dv + self.shift[1]


def _soft(signed: np.ndarray, width: float) -> np.ndarray:
    """Soft step: ~0 for signed << 0, ~1 for signed >> 0, over `width`."""
    return 1.0 / (1.0 + np.exp(-np.clip(signed / width, -30, 30)))


def _ellipse(u, v, cu, cv, au, av, edge) -> np.ndarray:
    f = ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2
    return _soft(1.0 - f, edge / min(au, av))


def _segment_distance(u, v, p, q) -> np.ndarray:
    pu, pv, qu, qv = p[0], p[1], q[0], q[1]
    du, dv = qu - pu, qv - pv
    t = np.clip(((u - pu) * du + (v - pv) * dv) / (du * du + dv * dv + 1e-12), 0.0, 1.0)
    return np.hypot(u - pu - t * du, v - pv - t * dv)


class Canvas:
    """One image under construction; `paint` blends a value in where a soft mask is 1."""

    def __init__(self, anatomy: Anatomy, jitter: Jitter, size: int):
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size
        uu, vv = np.meshgrid(grid, grid)
        self.u, self.v = (a.astype(np.float32) for a in jitter.to_anatomy(uu, vv))
        self.a, self.size = anatomy, size
        self.edge = 1.0 / size  # one pixel of edge softness
        self.img = np.full((size, size), 0.06, dtype=np.float32)

    def paint(self, mask: np.ndarray, value) -> None:
        self.img += mask * (value - self.img)

    def lung_mask(self, side: str) -> np.ndarray:
        centre, half, top, dome = self.a.lung_box(side)
        mid = (top + dome) / 2
        du = (self.u - centre) / half
        dv = np.minimum((self.v - mid) / (mid - top), 0.0)  # rounded apex, straight walls below
        walls = _soft(1.0 - (du**2 + dv**2), 2 * self.edge / half)
        diaphragm = dome + 0.06 * du**2  # the dome is lowest at the costophrenic angles
        return walls * _soft(diaphragm - self.v, self.edge)


def draw_thorax(c: Canvas) -> dict[str, np.ndarray]:
    """Soft tissue, then both lungs with vascular markings and faint ribs. Returns the lung masks."""
    a = c.a
    c.paint(_soft(a.half_width + 0.08 - np.abs(c.u - a.cx), 2 * c.edge), a.body)
    lungs = {side: c.lung_mask(side) for side in ("right", "left")}
    for side, mask in lungs.items():
        c.paint(mask, a.lung + _markings(c, side))
    ribs = 0.025 * np.clip(np.sin(2 * np.pi * (c.v - 0.5 * (c.u - a.cx) ** 2) * 11), 0, 1) ** 3
    c.img += ribs * (lungs["right"] + lungs["left"])
    return lungs


def draw_mediastinum(c: Canvas, ctr: float) -> None:
    """Mediastinum, air-filled trachea and the heart, drawn over the lungs (they are anterior)."""
    a = c.a
    carina = a.lung_top + 0.2
    c.paint(_soft(a.mediastinum - np.abs(c.u - a.cx), c.edge) * _soft(a.dome - c.v, c.edge), a.body + 0.04)
    c.paint(_soft(0.016 - np.abs(c.u - a.cx), c.edge) * _soft(carina - c.v, c.edge), a.body - 0.22)
    hu, hv, hw, hh = a.heart_box(ctr)
    c.paint(_ellipse(c.u, c.v, hu, hv, hw, hh, c.edge), HEART)


def _markings(c: Canvas, side: str) -> np.ndarray:
    """Vessels branching out from the hilum, fading towards the periphery (irregular, not a star)."""
    sign = -1.0 if side == "right" else 1.0
    hu, hv = c.a.cx + sign * (c.a.mediastinum + 0.03), c.a.dome - 0.28
    r = np.hypot(c.u - hu, c.v - hv)
    theta = np.arctan2(c.v - hv, (c.u - hu) * sign)
    phase = c.a.marking_phase
    wave = np.cos(13 * theta + phase + 6 * r) + 0.8 * np.cos(21 * theta - 2 * phase - 9 * r)
    return 0.07 * np.clip(wave - 0.6, 0, None) * np.exp(-r / 0.2)


def draw_effusion(c: Canvas, lungs: dict, side: str, size: str) -> tuple[float, float, float, float]:
    """Fluid filling the lung base up to a meniscus that climbs laterally (blunting the angle)."""
    centre, half, _, dome = c.a.lung_box(side)
    sign = -1.0 if side == "right" else 1.0
    du = (c.u - centre) / half
    lateral = np.clip(du * sign, -1, 1)  # -1 medial .. +1 lateral
    angle = dome + 0.06  # level of the costophrenic angle
    level = angle - EFFUSION_HEIGHT[size] + 0.03 * (1 - lateral)
    # Down to just below the diaphragm line, so the costophrenic angle itself fills in.
    walls = _soft(1.0 - du**2, 2 * c.edge / half)
    below = _soft(dome + 0.06 * du**2 + 0.015 - c.v, c.edge)
    c.paint(walls * below * _soft(c.v - level, c.edge), FLUID)
    return centre - half, angle - EFFUSION_HEIGHT[size], centre + half, angle + 0.015


def draw_opacity(c: Canvas, lungs: dict, side: str, level: str) -> tuple[float, float, float, float]:
    """A focal airspace opacity: two overlapping blobs, confined to the lung, in its lateral half."""
    centre, half, top, dome = c.a.lung_box(side)
    sign = -1.0 if side == "right" else 1.0
    pu, pv = centre + sign * 0.5 * half, top + OPACITY_LEVEL[level] * (dome - top)
    sigma = 0.05
    blob = np.exp(-((c.u - pu) ** 2 + (c.v - pv) ** 2) / (2 * sigma**2))
    blob += 0.7 * np.exp(-((c.u - pu + 0.025 * sign) ** 2 + (c.v - pv + 0.02) ** 2) / (2 * (0.7 * sigma) ** 2))
    c.img += 0.42 * np.clip(blob, 0, 1) * lungs[side]
    return pu - 2 * sigma, pv - 2 * sigma, pu + 2 * sigma, pv + 2 * sigma


def draw_pneumothorax(c: Canvas, lungs: dict, side: str, size: str) -> tuple[float, float, float, float]:
    """Apicolateral air without lung markings, bounded by a thin bright visceral pleural line."""
    centre, half, top, dome = c.a.lung_box(side)
    sign = -1.0 if side == "right" else 1.0
    depth, mid = PTX_DEPTH[size], (top + dome) / 2
    inner_u, inner_v = centre - sign * depth / 2, top + depth
    du = (c.u - inner_u) / (half - depth / 2)
    dv = np.minimum((c.v - mid) / (mid - inner_v), 0.0)
    inner = 1.0 - (du**2 + dv**2)
    upper = _soft(mid + 0.05 - c.v, 3 * c.edge)  # apicolateral: fades out below mid-lung
    rim = lungs[side] * _soft(-inner, c.edge / half) * upper
    c.paint(rim, 0.03)
    line = np.exp(-(inner / (1.2 * c.edge / half)) ** 2) * lungs[side] * upper
    c.img += 0.14 * line
    return centre - half, top, centre + half, mid


def draw_edema(c: Canvas, lungs: dict, severity: str) -> tuple[float, float, float, float]:
    """Bilateral perihilar haze (bat-wing), strongest at the hila."""
    gain, hv = EDEMA_GAIN[severity], c.a.dome - 0.27
    for side, sign in (("right", -1.0), ("left", 1.0)):
        hu = c.a.cx + sign * (c.a.mediastinum + 0.05)
        haze = np.exp(-(((c.u - hu) / 0.13) ** 2 + ((c.v - hv) / 0.16) ** 2))
        c.img += gain * haze * lungs[side]
    w = c.a.mediastinum + 0.25
    return c.a.cx - w, hv - 0.25, c.a.cx + w, hv + 0.25


def device_path(a: Anatomy, kind: str) -> list[tuple[float, float]]:
    """Polyline of a support device in anatomy coordinates."""
    carina = a.lung_top + 0.2
    hu, hv, _, hh = a.heart_box(a.ctr)
    if kind == "endotracheal tube":
        return [(a.cx, -0.05), (a.cx, carina - 0.05)]
    if kind == "picc line":  # from the right arm (image left) along the subclavian vein into the SVC
        return [(-0.05, 0.16), (a.cx - a.half_width, a.lung_top + 0.02),
                (a.cx - a.mediastinum, a.lung_top + 0.08), (a.cx - 0.035, hv - hh)]
    if kind == "nasogastric tube":
        return [(a.cx - 0.005, -0.05), (a.cx + 0.01, a.dome + 0.02), (a.cx + 0.14, a.dome + 0.12)]
    raise KeyError(kind)


def draw_device(c: Canvas, kind: str) -> tuple[float, float, float, float]:
    points = device_path(c.a, kind)
    half = max(0.7 * c.edge, 0.004)  # >= 1.4 px wide at any size
    dist = np.min([_segment_distance(c.u, c.v, p, q) for p, q in zip(points[:-1], points[1:])], axis=0)
    c.paint(np.clip(1.0 - (dist - half) / c.edge, 0.0, 1.0), DEVICE)
    us, vs = zip(*points)
    return min(us), min(vs), max(us), max(vs)


def finish(c: Canvas, jitter: Jitter, rng: np.random.Generator) -> np.ndarray:
    """Exposure, quantum noise, 8-bit quantisation."""
    img = (c.img - 0.4) * jitter.contrast + 0.4 + jitter.brightness
    img += rng.normal(0.0, jitter.noise, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_study(findings: dict, anatomy: Anatomy, rng: np.random.Generator, size: int,
                 with_mask: bool = False) -> tuple:
    """Draw one study. Returns the uint8 image and the findings' locations (pixel boxes); with `with_mask`, also
    the exact anatomy mask (uint8, 255 inside either lung or the heart, 0 elsewhere: the soft masks the image was
    painted with, cut at 0.5). The mask consumes no random numbers, so the image is the same either way.

    Order matters: lung findings first, then the mediastinum and heart over them, then the focal
    opacity (additive, so visible through the heart) and devices on top.
    """
    jitter = Jitter.draw(rng)
    cardio = findings["cardiomegaly"]
    ctr = float(rng.uniform(*CTR_ENLARGED[cardio["severity"]])) if cardio else anatomy.ctr
    c = Canvas(anatomy, jitter, size)
    lungs = draw_thorax(c)
    boxes = list(_draw_lung_findings(c, lungs, findings))
    draw_mediastinum(c, ctr)
    if findings["opacity"]:  # added over the heart too: attenuation sums, so no finding hides it
        o = findings["opacity"]
        boxes.append(("opacity", o["side"], draw_opacity(c, lungs, o["side"], o["level"])))
    hu, hv, hw, hh = anatomy.heart_box(ctr)
    boxes.append(("heart", "", (hu - hw, hv - hh, hu + hw, hv + hh)))
    if findings["device"]:
        boxes.append(("device", "", draw_device(c, findings["device"]["kind"])))
    locations = [{"finding": name, "side": side, "bbox": _to_pixels(box, jitter, size)} for name, side, box in boxes]
    for loc in locations:
        if loc["finding"] == "heart":
            loc["ctr"] = round(ctr, 3)  # cardiothoracic ratio drawn (> 0.5 = cardiomegaly)
    image = finish(c, jitter, rng)
    if not with_mask:
        return image, locations
    heart = _ellipse(c.u, c.v, hu, hv, hw, hh, c.edge)
    inside = np.maximum(np.maximum(lungs["right"], lungs["left"]), heart) > 0.5
    return image, locations, (inside * 255).astype(np.uint8)


def _draw_lung_findings(c: Canvas, lungs: dict, findings: dict):
    if findings["edema"]:
        yield "edema", "bilateral", draw_edema(c, lungs, findings["edema"]["severity"])
    if findings["effusion"]:
        e = findings["effusion"]
        for side in (("right", "left") if e["side"] == "bilateral" else (e["side"],)):
            yield "effusion", side, draw_effusion(c, lungs, side, e["size"])
    if findings["pneumothorax"]:
        p = findings["pneumothorax"]
        yield "pneumothorax", p["side"], draw_pneumothorax(c, lungs, p["side"], p["size"])


def _to_pixels(box: tuple, jitter: Jitter, size: int) -> list[int]:
    """Anatomy-space box -> clipped pixel box [x0, y0, x1, y1] of its image under the jitter."""
    u0, v0, u1, v1 = box
    us, vs = jitter.to_image(np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1]))
    clip = lambda x: int(np.clip(round(float(x) * size), 0, size))  # noqa: E731
    return [clip(us.min()), clip(vs.min()), clip(us.max()), clip(vs.max())]
