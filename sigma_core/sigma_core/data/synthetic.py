"""A deterministic synthetic street world where RGB + thermal/depth fusion matters.

Scenes are drawn with a pinhole camera 1.5 m above a flat ground, so sizes,
foot rows and depth are geometrically consistent. What makes fusion matter:

- people are warm in thermal; mannequins have the same silhouette but are at
  air temperature and uniformly coloured (RGB separates them by day, thermal
  always, depth never);
- at night RGB is dark and noisy, thermal is unaffected;
- posters of people on facades look like people in RGB but are flat (depth)
  and at wall temperature (thermal); they are labelled ``building``;
- warm utility boxes are person-warm in thermal but are background (RGB and
  depth separate them);
- vehicles have hot wheels/engines; depth has edges at every object outline.

Thermal is uint16 centi-Kelvin (``mono16``; 29315 = 20 degC), depth is uint16
millimetres (``16UC1``; 0 = invalid, e.g. sky) with pinhole intrinsics. Labels
are uint8 class ids (:data:`CLASSES`). Everything is a function of the seed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import yaml

from ..files import atomic_write_image, atomic_write_text, read_yaml_mapping
from .modality import ModalityScaling

CLASSES = ("background", "road", "building", "vegetation", "person", "vehicle", "mannequin", "cone")
PALETTE = (
    (0, 0, 0),
    (128, 64, 128),
    (70, 70, 70),
    (107, 142, 35),
    (220, 20, 60),
    (0, 0, 142),
    (250, 170, 160),
    (255, 140, 0),
)
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}
# -10 .. 50 degC in centi-Kelvin: covers night sky to sun-heated road with useful contrast.
THERMAL_SCALING = ModalityScaling("thermal", range=(26315.0, 32315.0))
DEPTH_SCALING = ModalityScaling("depth", max_range=40.0)
CAMERA_HEIGHT_M = 1.5
MAX_DEPTH_M = 40.0


def scaling_for(modality: str) -> ModalityScaling:
    """The ModalityScaling that suits this world's thermal (centi-Kelvin) or depth (mm) images."""
    if modality not in ("thermal", "depth"):
        raise ValueError(f"synthetic modality must be 'thermal' or 'depth', got {modality!r}")
    return THERMAL_SCALING if modality == "thermal" else DEPTH_SCALING


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera (pixels), shared by RGB, thermal and depth (they are registered)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def for_size(cls, height: int, width: int) -> Intrinsics:
        f = 0.85 * width
        return cls(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)

    @property
    def k(self) -> list[float]:
        """Row-major 3x3 camera matrix, as in sensor_msgs/CameraInfo.k."""
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]


@dataclass
class Frame:
    """One rendered instant. rgb (H, W, 3) uint8 RGB; thermal (H, W) uint16 centi-Kelvin;
    depth (H, W) uint16 mm (0 invalid); label (H, W) uint8 class ids."""

    rgb: np.ndarray
    thermal: np.ndarray
    depth: np.ndarray
    label: np.ndarray
    night: bool

    def modal(self, modality: str) -> np.ndarray:
        return self.thermal if modality == "thermal" else self.depth


@dataclass
class _Thing:
    kind: str  # person, mannequin, vehicle, cone, tree, hotbox
    x: float  # lateral position (m, + right) at t = 0
    z: float  # distance along the optical axis (m)
    vx: float  # lateral speed (m/s)
    colours: tuple = ()
    facing: int = 1


@dataclass
class _Facade:
    u0: float  # column span as fraction of the width
    u1: float
    z: float
    height_m: float
    colour: tuple
    poster: Optional[float] = None  # poster centre as a fraction of the facade span


@dataclass
class Scene:
    """A random street layout; :meth:`render` draws it at time ``t`` (objects move laterally)."""

    size: tuple[int, int]
    night: bool
    seed: int
    things: list = field(default_factory=list)
    facades: list = field(default_factory=list)
    air_k: float = 293.0

    @classmethod
    def random(cls, seed: int, size: tuple[int, int] = (120, 160), night: bool = False) -> Scene:
        rng = np.random.default_rng([int(seed), 7])
        scene = cls(size=(int(size[0]), int(size[1])), night=night, seed=int(seed))
        scene.air_k = float(rng.uniform(279, 287) if night else rng.uniform(288, 300))
        u = 0.0
        while u < 1.0:
            w = float(rng.uniform(0.15, 0.4))
            poster = float(rng.uniform(0.3, 0.7)) if rng.random() < 0.3 else None
            grey = int(rng.integers(90, 200))
            tint = rng.integers(-25, 26, 3)
            colour = tuple(int(np.clip(grey + t, 0, 255)) for t in tint)
            z, height = float(rng.uniform(28, 38)), float(rng.uniform(8, 22))
            scene.facades.append(_Facade(u, u + w, z, height, colour, poster))
            u += w

        half_view = (scene.size[1] / 2.0) / (0.85 * scene.size[1])  # visible half-width per metre of distance

        def add(kind, n, zr, xr=None, speed=0.0):
            for _ in range(n):
                z = float(rng.uniform(*zr))
                if xr is None:  # anywhere in view
                    x = float(rng.uniform(-0.85, 0.85)) * z * half_view
                else:  # |x| in xr, either side
                    x = float(rng.uniform(*xr)) * (1 if rng.random() < 0.5 else -1)
                colours = tuple(tuple(int(c) for c in rng.integers(20, 236, 3)) for _ in range(3))
                vx = float(rng.uniform(-speed, speed)) if speed else 0.0
                scene.things.append(_Thing(kind, x, z, vx, colours, 1 if vx >= 0 else -1))

        add("tree", int(rng.integers(1, 4)), (12, 26), xr=(5.5, 9.0))
        add("vehicle", int(rng.integers(0, 3)), (8, 24), xr=(0.0, 2.0), speed=8.0)
        add("person", int(rng.integers(1, 4)), (4, 16), speed=1.5)
        add("mannequin", int(rng.integers(0, 3)), (4, 14))
        add("cone", int(rng.integers(0, 4)), (4, 12), xr=(0.0, 3.0))
        add("hotbox", int(rng.integers(0, 2)), (5, 15), xr=(3.5, 6.0))
        return scene

    def render(self, t: float = 0.0, noise_seed: Optional[int] = None, camera: Optional[Intrinsics] = None,
               offset: tuple[float, float] = (0.0, 0.0)) -> Frame:
        """Draw the scene at time ``t`` seconds. ``noise_seed`` varies sensor noise only (default: the scene seed).

        camera: a pinhole camera of another size or focal length (default: the scene's own, 0.85 x width
        focal length at ``size``); offset: (right, down) metres of its centre from the scene's camera, optical
        axes parallel (a rig's baseline). Images are then of the camera's size.
        """
        return _render(self, float(t), self.seed if noise_seed is None else int(noise_seed), camera, offset)


def _render(scene: Scene, t: float, noise_seed: int, camera: Optional[Intrinsics] = None,
            offset: tuple[float, float] = (0.0, 0.0)) -> Frame:
    reference = Intrinsics.for_size(*scene.size)  # the camera the layout was made for
    cam = camera or reference
    h, w = cam.height, cam.width
    bx, by = (float(offset[0]), float(offset[1]))
    camera_height = CAMERA_HEIGHT_M - by  # y points down: a camera further down is nearer the ground
    rng = np.random.default_rng([noise_seed, 11, int(round(t * 1e6))])
    night, air = scene.night, scene.air_k
    rgb = np.zeros((h, w, 3), np.float32)
    temp = np.zeros((h, w), np.float32)
    depth = np.zeros((h, w), np.float32)  # metres, 0 = invalid (sky / too far)
    label = np.zeros((h, w), np.uint8)

    # sky: a vertical gradient; cold in the thermal infrared (clear sky radiates little)
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    sky_top, sky_bottom = (np.array([10, 12, 30]), np.array([25, 25, 45])) if night else (
        np.array([70, 130, 210]), np.array([180, 210, 240]))
    rgb[:] = (sky_top + (sky_bottom - sky_top) * rows)[:, None, :].reshape(h, 1, 3)
    temp[:] = air - 40.0

    # ground: depth from the flat-ground geometry; road where |X| < 3.5 m
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    below = yy > cam.cy + 0.5
    z_ground = np.where(below, cam.fy * camera_height / np.maximum(yy - cam.cy, 0.5), 0.0)
    x_ground = (xx - cam.cx) * z_ground / cam.fx + bx
    ground = below & (z_ground < MAX_DEPTH_M * 1.5)
    road = ground & (np.abs(x_ground) < 3.5)
    depth[ground] = z_ground[ground]
    rgb[ground] = (95, 90, 80)
    rgb[road] = (60, 60, 65)
    # lane markings: dashed centre line
    marks = road & (np.abs(x_ground) < 0.12) & ((z_ground % 6.0) < 3.0)
    rgb[marks] = (230, 230, 220)
    label[road] = CLASS_ID["road"]
    temp[ground] = air + (2.0 if night else 9.0)
    temp[road] = air + (3.0 if night else 14.0)  # asphalt holds the day's heat

    def paint(mask, colour, kelvin, z, cls):
        m = mask.astype(bool)
        rgb[m] = colour
        temp[m] = kelvin
        depth[m] = z
        label[m] = cls

    def new_mask():
        return np.zeros((h, w), np.uint8)

    def px(x_m, z):  # lateral metres at distance z -> column
        return cam.cx + cam.fx * (x_m - bx) / z

    def foot_row(z):
        return cam.cy + cam.fy * camera_height / z

    def metres(v, z):  # object size -> pixels
        return cam.fx * v / z

    def column(fraction, z):  # a column given as a fraction of the layout camera's width, in this camera
        if cam == reference and not bx:
            return fraction * w
        return px((fraction * reference.width - reference.cx) * z / reference.fx, z)

    # facades (far), with windows; posters of people on some
    for fac in scene.facades:
        m = new_mask()
        top = foot_row(fac.z) - metres(fac.height_m, fac.z)
        x0, x1 = int(round(column(fac.u0, fac.z))), int(round(column(min(fac.u1, 1.0), fac.z)))
        cv2.rectangle(m, (x0, int(round(top))), (x1, int(round(foot_row(fac.z)))), 1, -1)
        paint(m, fac.colour, air + (1.0 if night else 4.0), fac.z, CLASS_ID["building"])
        win = np.zeros_like(m)
        step = max(metres(3.0, fac.z), 3.0)
        wy = top + step * 0.4
        while wy < foot_row(fac.z) - step * 0.5:
            wx = x0 + step * 0.3
            while wx < x1 - step * 0.5:
                cv2.rectangle(win, (int(wx), int(wy)), (int(wx + step * 0.4), int(wy + step * 0.4)), 1, -1)
                wx += step
            wy += step
        wmask = (win > 0) & (m > 0)
        lit = (230, 200, 120) if night else (60, 80, 110)
        rgb[wmask] = lit
        temp[wmask] = air + (3.0 if night else 2.0)
        if fac.poster is not None:
            fraction = fac.u0 + (min(fac.u1, 1.0) - fac.u0) * fac.poster
            centre = column(fraction, fac.z)
            pm = new_mask()
            _person_shape(pm, centre, foot_row(fac.z) - metres(0.5, fac.z), metres(2.2, fac.z), 1, 0.0)
            pm &= m
            skin, shirt, trousers = _person_colours(scene.seed + int(fraction * reference.width))
            _paint_person_colours(rgb, pm, skin, shirt, trousers, centre, foot_row(fac.z) - metres(0.5, fac.z),
                                  metres(2.2, fac.z))

    # objects, far to near (painter's algorithm gives correct occlusion and depth edges)
    for th in sorted(scene.things, key=lambda s: -s.z):
        x = th.x + th.vx * t
        if th.vx:  # movers wrap around the field of view, so long bags keep their traffic
            span = 1.2 * th.z * (reference.cx / reference.fx) + 3.0
            x = (x + span) % (2 * span) - span
        z = th.z
        u = px(x, z)
        fy_ = foot_row(z)
        if th.kind == "tree":
            m = new_mask()
            half = metres(0.15, z)
            cv2.rectangle(m, (int(u - half), int(fy_ - metres(2.5, z))), (int(u + half), int(fy_)), 1, -1)
            cv2.ellipse(m, (int(u), int(fy_ - metres(4.0, z))), (int(metres(2.0, z)), int(metres(2.2, z))), 0, 0, 360,
                        1, -1)
            paint(m, (40, 100, 35), air - (1.0 if night else 2.0), z, CLASS_ID["vegetation"])
        elif th.kind in ("person", "mannequin"):
            height = metres(1.75, z)
            m = new_mask()
            _person_shape(m, u, fy_, height, th.facing, t if th.kind == "person" else 0.0)
            if th.kind == "person":
                paint(m, (0, 0, 0), 303.0, z, CLASS_ID["person"])
                skin, shirt, trousers = th.colours[0], th.colours[1], th.colours[2]
                skin = _SKINS[sum(skin) % len(_SKINS)]
                _paint_person_colours(rgb, m, skin, shirt, trousers, u, fy_, height)
                head = m.astype(bool) & (yy < fy_ - 0.85 * height)
                temp[head] = 307.0  # bare face: warmer than clothes
            else:
                plastic = _PLASTICS[sum(th.colours[0]) % len(_PLASTICS)]
                paint(m, plastic, air, z, CLASS_ID["mannequin"])
        elif th.kind == "vehicle":
            _draw_vehicle(paint, new_mask, rgb, temp, u, fy_, z, metres, th, night, air)
        elif th.kind == "cone":
            m = new_mask()
            hh, bw = metres(0.7, z), metres(0.2, z)
            pts = np.array([[u, fy_ - hh], [u - bw, fy_], [u + bw, fy_]], np.int32)
            cv2.fillPoly(m, [pts], 1)
            paint(m, (255, 110, 20), air, z, CLASS_ID["cone"])
            band = m.astype(bool) & (yy > fy_ - hh * 0.6) & (yy < fy_ - hh * 0.4)
            rgb[band] = (245, 245, 245)
        elif th.kind == "hotbox":
            m = new_mask()
            half = metres(0.35, z)
            cv2.rectangle(m, (int(u - half), int(fy_ - metres(1.6, z))), (int(u + half), int(fy_)), 1, -1)
            paint(m, (120, 125, 115), 306.0, z, CLASS_ID["background"])  # person-warm, not a person

    depth[depth > MAX_DEPTH_M] = 0.0

    # sensors: RGB lighting and noise (night: dark and noisy); thermal blur + noise; depth noise ~ z^2
    if night:
        rgb = rgb * 0.14 + rng.normal(0.0, 7.0, rgb.shape).astype(np.float32)
    else:
        rgb = rgb + rng.normal(0.0, 2.0, rgb.shape).astype(np.float32)
    rgb8 = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    sigma = max(0.6, w / 250.0)
    temp = cv2.GaussianBlur(temp, (0, 0), sigma) + rng.normal(0.0, 0.08, temp.shape).astype(np.float32)
    thermal = np.clip(np.round(temp * 100.0), 0, 65535).astype(np.uint16)
    valid = depth > 0
    noisy = depth + rng.normal(0.0, 1.0, depth.shape).astype(np.float32) * (0.0005 * depth * depth)
    depth_mm = np.where(valid, np.clip(np.round(noisy * 1000.0), 1, 65535), 0).astype(np.uint16)
    return Frame(rgb=rgb8, thermal=thermal, depth=depth_mm, label=label, night=night)


_SKINS = ((224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172), (92, 58, 30))
_PLASTICS = ((235, 225, 210), (200, 200, 200), (240, 240, 240))


def _person_shape(mask: np.ndarray, u: float, foot: float, height: float, facing: int, t: float) -> None:
    """Stick-figure silhouette standing at (u, foot), ``height`` pixels tall; legs swing with t."""
    hd = height * 0.11
    top = foot - height
    cv2.circle(mask, (int(round(u)), int(round(top + hd))), max(int(round(hd)), 1), 1, -1)
    tw = max(height * 0.14, 1.0)
    cv2.rectangle(mask, (int(u - tw), int(top + 2 * hd)), (int(u + tw), int(foot - height * 0.45)), 1, -1)
    swing = np.sin(t * 6.0) * height * 0.12 * facing
    lw = max(int(round(height * 0.05)), 1)
    hip = (int(round(u)), int(round(foot - height * 0.47)))
    for s in (swing, -swing):
        cv2.line(mask, hip, (int(round(u + s)), int(round(foot))), 1, lw)
    sh = (int(round(u)), int(round(top + 2.4 * hd)))
    for s in (swing, -swing):
        cv2.line(mask, sh, (int(round(u - s * 0.8)), int(round(foot - height * 0.5))), 1, max(lw - 1, 1))


def _person_colours(seed: int):
    rng = np.random.default_rng([seed, 3])
    return (_SKINS[int(rng.integers(len(_SKINS)))], tuple(int(c) for c in rng.integers(20, 236, 3)),
            tuple(int(c) for c in rng.integers(20, 236, 3)))


def _paint_person_colours(rgb, mask, skin, shirt, trousers, u, foot, height) -> None:
    m = mask.astype(bool)
    rows = np.arange(rgb.shape[0], dtype=np.float32)[:, None]
    rgb[m & (rows >= foot - height * 0.47)] = trousers
    rgb[m & (rows < foot - height * 0.47)] = shirt
    rgb[m & (rows < foot - height * 0.78)] = skin


def _draw_vehicle(paint, new_mask, rgb, temp, u, foot, z, metres, th, night, air) -> None:
    length, body_h = metres(4.2, z), metres(1.0, z)
    m = new_mask()
    x0, x1 = int(u - length / 2), int(u + length / 2)
    wheel_r = max(int(metres(0.33, z)), 1)
    cv2.rectangle(m, (x0, int(foot - wheel_r - body_h)), (x1, int(foot - wheel_r * 0.6)), 1, -1)
    cab = (int(u - length * 0.25), int(foot - wheel_r - body_h - metres(0.55, z)))
    cv2.rectangle(m, cab, (int(u + length * 0.2), int(foot - wheel_r - body_h)), 1, -1)
    wheels = new_mask()
    for wx in (u - length * 0.3, u + length * 0.3):
        cv2.circle(wheels, (int(wx), int(foot - wheel_r)), wheel_r, 1, -1)
    m |= wheels
    moving = abs(th.vx) > 0.5
    paint(m, th.colours[0], air + (4.0 if night else 8.0), z, CLASS_ID["vehicle"])
    wb = wheels.astype(bool)
    rgb[wb] = (20, 20, 20)
    temp[wb] = 318.0 if moving else air + 2.0
    win = new_mask()
    cv2.rectangle(win, (cab[0] + 1, cab[1] + 1), (int(u + length * 0.2) - 1, int(foot - wheel_r - body_h) - 1), 1, -1)
    wmask = win.astype(bool) & m.astype(bool)
    rgb[wmask] = (30, 40, 60)
    front = u + th.facing * length * 0.5
    engine = new_mask()
    lo, hi = sorted((int(front), int(front - th.facing * length * 0.3)))
    cv2.rectangle(engine, (lo, int(foot - wheel_r - body_h)), (hi, int(foot - wheel_r)), 1, -1)
    eb = engine.astype(bool) & m.astype(bool)
    if moving:
        temp[eb] = 325.0
    if night:  # headlights: bright in RGB (after the night dimming they stay bright)
        lamp = new_mask()
        cv2.circle(lamp, (int(front - th.facing * 2), int(foot - wheel_r - body_h * 0.5)), max(wheel_r // 2, 1), 1, -1)
        rgb[lamp.astype(bool) & m.astype(bool)] = (255 / 0.14, 255 / 0.14, 230 / 0.14)


# --- dataset folders ----------------------------------------------------------------------------------


def world_description(modality: str = "thermal") -> dict:
    """Classes, palette, modality and scaling of this world (the dataset.yaml fields a bag cannot carry)."""
    return {
        "classes": list(CLASSES),
        "palette": [list(c) for c in PALETTE],
        "modality": modality,
        "scaling": scaling_for(modality).to_dict(),
    }


def write_dataset(
    root: str | os.PathLike,
    n: int = 64,
    seed: int = 0,
    night_fraction: float = 0.5,
    size: tuple[int, int] = (120, 160),
    modality: str = "thermal",
    test_fraction: float = 0.25,
) -> Path:
    """Write ``n`` independent scenes in the published layout and a dataset.yaml; returns the root.

    Layout: RGB/<i>.png (RGB), Modal/<i>.png (uint16 centi-Kelvin or mm), Label/<i>.png
    (uint8 ids), train.txt, test.txt, plus test_night.txt / test_day.txt (the night or day
    part of the test split, for night-only mIoU) and meta.yaml (per-image night flag).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= night_fraction <= 1.0 or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"night_fraction must be in [0, 1] and test_fraction in [0, 1), got {night_fraction}, "
                         f"{test_fraction}")
    scaling_for(modality)
    root = Path(root)
    source = {"generator": "sigma_core.data.synthetic", "seed": int(seed), "night_fraction": night_fraction,
              "n": int(n), "test_fraction": test_fraction}
    _check_own_folder(root, source, size, modality)
    for d in ("RGB", "Modal", "Label"):
        (root / d).mkdir(parents=True, exist_ok=True)
    n_test = int(round(n * test_fraction))
    test_every = n / n_test if n_test else None
    test_ids = {int(i * test_every + test_every - 1) for i in range(n_test)} if n_test else set()
    splits: dict[str, list[str]] = {"train": [], "test": [], "test_night": [], "test_day": []}
    meta = {}
    for i in range(n):
        rng = np.random.default_rng([int(seed), i, 1])
        night = bool(rng.random() < night_fraction)
        frame = Scene.random(seed=int(seed) * 100003 + i, size=size, night=night).render(0.0)
        name = f"{i:05d}"
        atomic_write_image(root / "RGB" / f"{name}.png", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
        atomic_write_image(root / "Modal" / f"{name}.png", frame.modal(modality))
        atomic_write_image(root / "Label" / f"{name}.png", frame.label)
        meta[name] = {"night": night}
        if i in test_ids:
            splits["test"].append(name)
            splits["test_night" if night else "test_day"].append(name)
        else:
            splits["train"].append(name)
    for split, names in splits.items():
        atomic_write_text(root / f"{split}.txt", "".join(f"{s}\n" for s in names))
    atomic_write_text(root / "meta.yaml", yaml.safe_dump(meta, sort_keys=True))
    from .dataset import DatasetSpec  # imports torch: here only, the demo's recording runs without it

    h, w = size
    DatasetSpec(
        name="synthetic",
        classes=tuple(CLASSES),
        palette=tuple(tuple(c) for c in PALETTE),
        modality=modality,
        scaling=scaling_for(modality),
        splits={s: (f"{s}.txt",) for s in splits},
        image_size=(h, w),
        extra={
            "format": "sigma-rgbx-1",
            "encodings": {"rgb": "rgb8", "modal": "mono16" if modality == "thermal" else "16UC1"},
            "intrinsics": Intrinsics.for_size(h, w).k,
            "source": source,
            "counts": {s: len(v) for s, v in splits.items()},
        },
    ).write_yaml(root)
    return root


def _check_own_folder(root: Path, source: dict, size: tuple[int, int], modality: str) -> None:
    """Writing into ``root`` may only redo this same synthetic dataset: a folder holding another dataset (a
    user's, or synthetic scenes made with other options) would get its split lists and images replaced, or
    stale images beside the new ones. Raises ValueError before anything is written."""
    ours = ("RGB", "Modal", "Label", "train.txt", "test.txt", "meta.yaml", "dataset.yaml")
    if not any((root / name).exists() for name in ours):
        return
    try:
        before = read_yaml_mapping(root / "dataset.yaml")
    except (ValueError, OSError):
        before = {}
    recorded = (before.get("source") or {}) if isinstance(before.get("source"), dict) else {}
    same = (recorded == source and list(before.get("image_size") or []) == list(size)
            and before.get("modality") == modality)
    if not same:
        what = ("synthetic scenes made with other options" if recorded.get("generator") == source["generator"]
                else "a dataset this generator did not write")
        raise ValueError(f"{root} holds {what}; writing into it would replace its split lists and images. "
                         "Write into a new folder, or delete this one first")


# --- bags ---------------------------------------------------------------------------------------------

TOPICS = {
    "rgb": "/camera/color/image_raw",
    "thermal": "/thermal/image_raw",
    "depth": "/camera/depth/image_rect_raw",
    "camera_info": "/camera/depth/camera_info",
    "label": "/camera/labels",
}


@dataclass
class BagRecord:
    """What :func:`write_bag` wrote: topic names and every message as (log_ns, topic, stamp_ns), in bag order."""

    path: Path
    storage: str
    rgb_topic: str
    modal_topic: str
    label_topic: Optional[str]
    camera_info_topic: Optional[str]
    messages: list = field(default_factory=list)

    def stamps(self, topic: str) -> list[int]:
        return [s for _, t, s in self.messages if t == topic]


def write_bag(
    path: str | os.PathLike,
    storage: str = "sqlite3",
    seconds: float = 3.0,
    seed: int = 0,
    modality: str = "thermal",
    night: bool = False,
    size: tuple[int, int] = (120, 160),
    rgb_hz: float = 30.0,
    modal_hz: float = 9.0,
    jitter_s: float = 0.002,
    rgb_format: str = "raw",
    modal_format: str = "raw",
    labels: bool = True,
    start_ns: int = 1_700_000_000_000_000_000,
    modal_clock_offset_s: float = 0.0,
    rig=None,
) -> BagRecord:
    """Record the synthetic world to a bag: a moving scene seen by registered RGB and thermal/depth cameras.

    RGB at ``rgb_hz`` (``rgb8``, or CompressedImage if ``rgb_format`` is ``jpeg``/``png``), the
    modality at ``modal_hz`` (thermal ``mono16`` centi-Kelvin or depth ``16UC1`` mm, or 16-bit PNG
    CompressedImage if ``modal_format`` is ``png``), header stamps with Gaussian ``jitter_s``, receive
    (log) times later than the stamps by a per-sensor latency (so bag order is not stamp order), a
    ``mono8`` label topic stamped exactly like RGB, and a CameraInfo for depth. ``storage``: sqlite3,
    mcap or ros1 (``path`` then names a ``.bag`` file). ``modal_clock_offset_s`` shifts the modality's
    stamps (an unsynchronised clock). ``rig`` (a :class:`sigma_core.data.synthetic_rig.SyntheticRig`): the
    modality comes from its own camera beside the RGB one (``size`` is then the rig's RGB size) and the rig's
    true calibration is written beside the bag (``<path>.rig.yaml``). Deterministic in ``seed``.
    """
    from .bags import BagWriter
    from .image_encoding import encode_compressed

    scaling_for(modality)
    if rgb_format not in ("raw", "jpeg", "png") or modal_format not in ("raw", "png"):
        raise ValueError(f"rgb_format must be raw/jpeg/png and modal_format raw/png, got {rgb_format}, {modal_format}")
    rng = np.random.default_rng([int(seed), 5])
    if rig is not None:
        size = rig.rgb.size
    scene = Scene.random(seed=int(seed), size=size, night=night)
    h, w = size
    cam = Intrinsics.for_size(h, w)
    modal_encoding = "mono16" if modality == "thermal" else "16UC1"
    rgb_topic = TOPICS["rgb"] + ("/compressed" if rgb_format != "raw" else "")
    modal_topic = TOPICS[modality] + ("/compressed" if modal_format != "raw" else "")
    record = BagRecord(Path(path), storage, rgb_topic, modal_topic, TOPICS["label"] if labels else None,
                       TOPICS["camera_info"] if modality == "depth" else None)
    pending = []  # (log_ns, order, topic, stamp_ns, builder)

    def stamp_of(t: float, offset: float = 0.0) -> int:
        return start_ns + int(round((t + offset + rng.normal(0.0, jitter_s)) * 1e9))

    n_rgb = int(seconds * rgb_hz)
    for k in range(n_rgb):
        t = k / rgb_hz
        st = stamp_of(t)
        log = st + int(rng.uniform(5e6, 12e6))
        pending.append((log, 0, rgb_topic, st, ("rgb", t, k)))
        if labels:
            pending.append((log + 1_000_000, 2, TOPICS["label"], st, ("label", t, k)))
    n_modal = int(seconds * modal_hz)
    phase = float(rng.uniform(0.0, 1.0 / modal_hz))
    for j in range(n_modal):
        t = phase + j / modal_hz
        st = stamp_of(t, modal_clock_offset_s)
        log = st + int(rng.uniform(20e6, 45e6))
        pending.append((log, 1, modal_topic, st, ("modal", t, j)))
        if record.camera_info_topic:
            pending.append((log, 3, record.camera_info_topic, st, ("info", t, j)))
    pending.sort(key=lambda m: (m[0], m[1]))

    cache: dict[tuple[str, int], Frame] = {}

    def frame(stream: str, t: float, idx: int) -> Frame:
        key = (stream, idx)
        if key not in cache:
            cache.clear()  # label follows its RGB frame closely; keep just the last render
            noise = int(seed) * 1000003 + (0 if stream == "rgb" else 500009) + idx
            cache[key] = (rig.render_modal(scene, t, noise) if rig is not None and stream == "modal"
                          else scene.render(t, noise_seed=noise))
        return cache[key]

    with BagWriter(path, storage) as bag:
        for log, _, topic, st, (what, t, idx) in pending:
            if what == "rgb":
                img = frame("rgb", t, idx).rgb
                if rgb_format == "raw":
                    msg = bag.image(st, "camera_color", img, "rgb8")
                else:
                    msg = bag.compressed_image(st, "camera_color", *encode_compressed(img, "rgb8", rgb_format))
            elif what == "label":
                msg = bag.image(st, "camera_color", frame("rgb", t, idx).label, "mono8")
            elif what == "modal":
                img = frame("modal", t, idx).modal(modality)
                frame_id = "thermal" if modality == "thermal" else "camera_depth"
                if modal_format == "raw":
                    msg = bag.image(st, frame_id, img, modal_encoding)
                else:
                    msg = bag.compressed_image(st, frame_id, *encode_compressed(img, modal_encoding, "png"))
            elif rig is not None:
                m = rig.modal
                msg = bag.camera_info(st, "camera_depth", m.height, m.width, m.K.reshape(-1).tolist(),
                                      list(m.D) + [0.0] * (5 - len(m.D)))
            else:
                msg = bag.camera_info(st, "camera_depth", h, w, cam.k)
            bag.write(topic, log, msg)
            record.messages.append((log, topic, st))
    if rig is not None:
        from .synthetic_rig import write_rig_files

        write_rig_files(path, rig)
    return record
