//! The simulated arms' camera: a pinhole camera above the arm's plane that sees the links, the
//! joints and the target on a checkered floor under one point light. Each pixel's ray is cast onto
//! the plane z = 0 and shaded there, so a frame costs a few distance tests per pixel and no
//! allocation. Every robot has its own camera (pose, field of view, colours, lighting), as real
//! robots of one model see one scene differently.

use super::{Arm, Expert, JOINTS, RATE_HZ, Robot, Task};

/// Width and height of the simulated images, pixels.
pub const SIZE: u32 = 96;
/// Half the thickness of a link, m.
pub const LINK_RADIUS: f64 = 0.025;
/// Radius of a joint's disc, m.
pub const JOINT_RADIUS: f64 = 0.034;
/// Radius of the base's disc, m.
pub const BASE_RADIUS: f64 = 0.055;
/// Radius of the target's disc, m.
pub const TARGET_RADIUS: f64 = 0.05;
/// Frame of the images, as their headers name it.
pub const FRAME_ID: &str = "camera_optical_frame";
/// Height the links' round tops are lit at, m (they lie on the floor, a few cm thick).
const LINK_TOP: f64 = 0.03;
/// What a ray that misses the floor sees.
const SKY: [f64; 3] = [0.22, 0.24, 0.28];

/// A camera looking at the arm's plane.
#[derive(Debug, Clone, PartialEq)]
pub struct Camera {
    /// Where the camera is, m (the arm's base is the origin, the arm moves in z = 0).
    pub position: [f64; 3],
    /// The point it looks at, m.
    pub look_at: [f64; 3],
    /// Rotation about the viewing direction, rad (positive turns the picture clockwise).
    pub roll: f64,
    /// Horizontal field of view, rad.
    pub hfov: f64,
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
    /// Floor colour, linear RGB in 0..1.
    pub floor: [f64; 3],
    /// Side of the floor's checker squares, m.
    pub checker_m: f64,
    /// How much darker the dark squares are, 0..1.
    pub checker_contrast: f64,
    /// Link colour.
    pub link: [f64; 3],
    /// Joint colour.
    pub joint: [f64; 3],
    /// Target colour.
    pub target: [f64; 3],
    /// Light that reaches everything, per channel.
    pub ambient: [f64; 3],
    /// Position of the point light, m.
    pub light: [f64; 3],
    /// Colour and strength of the point light.
    pub light_rgb: [f64; 3],
    /// How fast the light fades with the squared distance, 1/m².
    pub falloff: f64,
    /// How much darker the corners are than the centre, 0..1.
    pub vignette: f64,
}

/// An image buffer that does not hold one frame of the camera.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the image buffer holds {got} bytes; a {width}x{height} rgb8 frame needs {need}")]
pub struct BufferSize {
    /// Bytes given.
    pub got: usize,
    /// Bytes needed.
    pub need: usize,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
}

type V3 = [f64; 3];

fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn mul(a: V3, k: f64) -> V3 {
    [a[0] * k, a[1] * k, a[2] * k]
}
fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn cross(a: V3, b: V3) -> V3 {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
fn unit(a: V3) -> V3 {
    mul(a, 1.0 / dot(a, a).sqrt())
}

/// The camera's optical frame (x right, y down, z forward) and focal length in pixels.
struct Frame {
    right: V3,
    down: V3,
    forward: V3,
    focal: f64,
    cx: f64,
    cy: f64,
}

/// What never changes in one pixel (see [`Camera::pixel`]).
#[derive(Debug, Clone, Copy)]
struct Pixel {
    hit: Option<([f64; 2], f64)>,
    base: V3,
    shade: f64,
}

impl Pixel {
    /// Writes colour `c`, vignetted, as rgb8.
    fn put(&self, c: V3, out: &mut [u8]) {
        for (o, v) in out.iter_mut().zip(mul(c, self.shade)) {
            *o = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
}

/// A camera with its floor worked out once: each frame starts from the empty scene and redraws
/// only the rows' stretches the arm and the target can touch. What the sim node and the recorder
/// render with; the bytes are those of [`Camera::render`].
#[derive(Debug, Clone)]
pub struct Renderer {
    camera: Camera,
    pixels: Vec<Pixel>,
    background: Vec<u8>,
    /// How far outside a shape a pixel's footprint can still reach it, m.
    margin: f64,
}

impl Renderer {
    /// Works out `camera`'s empty scene.
    pub fn new(camera: Camera) -> Renderer {
        let f = camera.frame();
        let (w, h) = (camera.width as usize, camera.height as usize);
        let pixels: Vec<Pixel> =
            (0..h).flat_map(|j| (0..w).map(move |i| (i, j))).map(|(i, j)| camera.pixel(&f, i, j)).collect();
        let mut background = vec![0; camera.frame_len()];
        for (px, out) in pixels.iter().zip(background.chunks_exact_mut(3)) {
            px.put(px.base, out);
        }
        let margin = pixels.iter().filter_map(|p| p.hit.map(|(_, footprint)| footprint)).fold(0.0, f64::max);
        Renderer { camera, pixels, background, margin }
    }

    /// The camera it renders.
    pub fn camera(&self) -> &Camera {
        &self.camera
    }

    /// [`Camera::render`], faster.
    pub fn render(&self, robot: &Robot, q: &[f64; JOINTS], target: [f64; 2], out: &mut [u8]) -> Result<(), BufferSize> {
        let cam = &self.camera;
        cam.check(out)?;
        out.copy_from_slice(&self.background);
        let points = robot.points(q);
        let (w, h) = (cam.width as usize, cam.height as usize);
        // Each shape's box on the floor, grown by its radius and a pixel's footprint, then its
        // box in the image: the projection of a rectangle of the plane lies within the box of
        // its projected corners.
        let reach = |lo: [f64; 2], hi: [f64; 2], r: f64| -> [usize; 4] {
            let m = r + self.margin;
            let corners =
                [[lo[0] - m, lo[1] - m], [hi[0] + m, lo[1] - m], [lo[0] - m, hi[1] + m], [hi[0] + m, hi[1] + m]];
            let mut b = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
            for c in corners {
                let Some(px) = cam.project([c[0], c[1], 0.0]) else {
                    return [0, 0, w, h];
                };
                b = [b[0].min(px[0]), b[1].min(px[1]), b[2].max(px[0]), b[3].max(px[1])];
            }
            let clip = |v: f64, n: usize| v.clamp(0.0, n as f64) as usize;
            [
                clip(b[0].floor() - 1.0, w),
                clip(b[1].floor() - 1.0, h),
                clip(b[2].ceil() + 1.0, w),
                clip(b[3].ceil() + 1.0, h),
            ]
        };
        let mut boxes = [[0usize; 4]; 2 * JOINTS + 1];
        boxes[0] = reach(target, target, TARGET_RADIUS);
        for j in 0..JOINTS {
            let (a, b) = (points[j], points[j + 1]);
            boxes[1 + j] = reach([a[0].min(b[0]), a[1].min(b[1])], [a[0].max(b[0]), a[1].max(b[1])], LINK_RADIUS);
            boxes[1 + JOINTS + j] = reach(a, a, BASE_RADIUS.max(JOINT_RADIUS));
        }
        for (j, row) in out.chunks_exact_mut(w * 3).enumerate() {
            let (lo, hi) =
                boxes.iter().filter(|b| b[1] <= j && j < b[3]).fold((w, 0), |(lo, hi), b| (lo.min(b[0]), hi.max(b[2])));
            for i in lo..hi {
                let px = &self.pixels[j * w + i];
                px.put(cam.shade(px, &points, target), &mut row[i * 3..i * 3 + 3]);
            }
        }
        Ok(())
    }
}

/// How much of a pixel `footprint` wide a shape covers whose edge is `inside` metres away
/// (negative outside): a linear ramp one pixel wide, so shapes move smoothly with the arm.
fn coverage(inside: f64, footprint: f64) -> f64 {
    (inside / footprint + 0.5).clamp(0.0, 1.0)
}

fn mix(a: V3, b: V3, k: f64) -> V3 {
    add(a, mul(sub(b, a), k))
}

impl Camera {
    /// The reference camera (arm-a's): behind and above the base, looking over the workspace.
    pub fn reference() -> Camera {
        Camera {
            position: [-0.05, 0.0, 1.4],
            look_at: [0.42, 0.0, 0.0],
            roll: 0.0,
            hfov: 62f64.to_radians(),
            width: SIZE,
            height: SIZE,
            floor: [0.80, 0.78, 0.74],
            checker_m: 0.1,
            checker_contrast: 0.12,
            link: [0.95, 0.50, 0.12],
            joint: [0.18, 0.18, 0.20],
            target: [0.10, 0.40, 0.95],
            ambient: [0.35, 0.35, 0.35],
            light: [0.3, 0.5, 1.6],
            light_rgb: [0.85, 0.85, 0.85],
            falloff: 0.15,
            vignette: 0.15,
        }
    }

    /// A camera of one model mounted a little differently: moved a few cm, turned a few
    /// degrees, a slightly wider lens, a warmer and dimmer light (arm-b's).
    pub fn near() -> Camera {
        let r = Camera::reference();
        Camera {
            position: [-0.02, 0.04, 1.37],
            look_at: [0.44, 0.03, 0.0],
            roll: 3f64.to_radians(),
            hfov: 65f64.to_radians(),
            ambient: [0.35, 0.34, 0.32],
            light: [0.25, 0.55, 1.55],
            light_rgb: [0.85, 0.80, 0.72],
            ..r
        }
    }

    /// A camera clearly elsewhere: off to one side and lower, rolled, a wider lens, other
    /// paint on the arm and the target, a stronger light from the other side (arm-c's).
    pub fn far() -> Camera {
        let r = Camera::reference();
        Camera {
            position: [0.1, -0.4, 1.3],
            look_at: [0.45, 0.04, 0.0],
            roll: -8f64.to_radians(),
            hfov: 70f64.to_radians(),
            floor: [0.70, 0.74, 0.78],
            checker_m: 0.075,
            link: [0.90, 0.78, 0.10],
            joint: [0.30, 0.12, 0.12],
            target: [0.10, 0.72, 0.72],
            ambient: [0.26, 0.28, 0.32],
            light: [0.8, -0.6, 1.3],
            light_rgb: [1.05, 1.05, 1.1],
            falloff: 0.25,
            vignette: 0.3,
            ..r
        }
    }

    /// Bytes of one rgb8 frame.
    pub fn frame_len(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    fn frame(&self) -> Frame {
        let forward = unit(sub(self.look_at, self.position));
        // Looking straight down leaves "up" undefined; then the picture's right is world -y.
        let side = cross(forward, [0.0, 0.0, 1.0]);
        let right0 = if dot(side, side) < 1e-12 { [0.0, -1.0, 0.0] } else { unit(side) };
        let down0 = cross(forward, right0);
        let (s, c) = self.roll.sin_cos();
        let right = add(mul(right0, c), mul(down0, s));
        let down = sub(mul(down0, c), mul(right0, s));
        Frame {
            right,
            down,
            forward,
            focal: self.width as f64 / 2.0 / (self.hfov / 2.0).tan(),
            cx: self.width as f64 / 2.0,
            cy: self.height as f64 / 2.0,
        }
    }

    /// Where world point `p` lands in the image, in pixels from the top-left corner (pixel
    /// `(i, j)` spans `i..i+1`, `j..j+1`); `None` behind the camera.
    pub fn project(&self, p: [f64; 3]) -> Option<[f64; 2]> {
        let f = self.frame();
        let d = sub(p, self.position);
        let z = dot(d, f.forward);
        (z > 1e-9).then(|| [f.cx + f.focal * dot(d, f.right) / z, f.cy + f.focal * dot(d, f.down) / z])
    }

    /// The point of the arm's plane that image point `px` (pixels, as [`Camera::project`] gives
    /// them) sees; `None` when its ray misses the plane.
    pub fn ray_to_plane(&self, px: [f64; 2]) -> Option<[f64; 2]> {
        let f = self.frame();
        let dir = self.ray(&f, px[0], px[1]);
        (dir[2] < -1e-12).then(|| {
            let t = -self.position[2] / dir[2];
            [self.position[0] + t * dir[0], self.position[1] + t * dir[1]]
        })
    }

    fn ray(&self, f: &Frame, x: f64, y: f64) -> V3 {
        add(f.forward, add(mul(f.right, (x - f.cx) / f.focal), mul(f.down, (y - f.cy) / f.focal)))
    }

    /// The light reaching a surface at `p` with normal `n` (unit), per channel.
    fn lit(&self, albedo: V3, p: V3, n: V3) -> V3 {
        let l = sub(self.light, p);
        let d2 = dot(l, l);
        let lambert = (dot(n, l) / d2.sqrt()).max(0.0) / (1.0 + self.falloff * d2);
        [
            albedo[0] * (self.ambient[0] + self.light_rgb[0] * lambert),
            albedo[1] * (self.ambient[1] + self.light_rgb[1] * lambert),
            albedo[2] * (self.ambient[2] + self.light_rgb[2] * lambert),
        ]
    }

    /// What never changes in pixel `(i, j)`: where its ray meets the floor, how much floor it
    /// spans there, the lit floor (or the sky), and its vignetting.
    fn pixel(&self, f: &Frame, i: usize, j: usize) -> Pixel {
        let (x, y) = (i as f64 + 0.5, j as f64 + 0.5);
        let dir = self.ray(f, x, y);
        let r2 = ((x - f.cx).powi(2) + (y - f.cy).powi(2)) / (f.cx * f.cx + f.cy * f.cy);
        let shade = 1.0 - self.vignette * r2;
        if dir[2] >= -1e-9 {
            return Pixel { hit: None, base: SKY, shade };
        }
        let t = -self.position[2] / dir[2];
        let p = [self.position[0] + t * dir[0], self.position[1] + t * dir[1]];
        // Wider far away and at grazing angles.
        let footprint = (t * dot(dir, dir) / (f.focal * -dir[2])).max(1e-4);
        let dark = self.checker(p, footprint);
        let floor = mul(self.floor, 1.0 - self.checker_contrast * dark);
        Pixel { hit: Some((p, footprint)), base: self.lit(floor, [p[0], p[1], 0.0], [0.0, 0.0, 1.0]), shade }
    }

    /// Renders what the camera sees of `robot` at true joint angles `q` reaching for `target`
    /// into `out`: rgb8, rows top to bottom, `width × 3` bytes a row. The same inputs give the
    /// same bytes. [`Renderer`] gives the same bytes faster, working out the floor once.
    pub fn render(&self, robot: &Robot, q: &[f64; JOINTS], target: [f64; 2], out: &mut [u8]) -> Result<(), BufferSize> {
        self.check(out)?;
        let f = self.frame();
        let points = robot.points(q);
        for (j, row) in out.chunks_exact_mut(self.width as usize * 3).enumerate() {
            for (i, px) in row.chunks_exact_mut(3).enumerate() {
                let pixel = self.pixel(&f, i, j);
                pixel.put(self.shade(&pixel, &points, target), px);
            }
        }
        Ok(())
    }

    fn check(&self, out: &[u8]) -> Result<(), BufferSize> {
        let need = self.frame_len();
        if out.len() == need {
            Ok(())
        } else {
            Err(BufferSize { got: out.len(), need, width: self.width, height: self.height })
        }
    }

    /// The colour of a pixel: its floor, then the target, the links and the joints over it.
    fn shade(&self, px: &Pixel, points: &[[f64; 2]; JOINTS + 1], target: [f64; 2]) -> V3 {
        let mut c = px.base;
        let Some((p, footprint)) = px.hit else {
            return c;
        };
        let up = [0.0, 0.0, 1.0];
        let at = [p[0], p[1], 0.0];
        let dist = |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        let k = coverage(TARGET_RADIUS - dist(p, target), footprint);
        if k > 0.0 {
            c = mix(c, self.lit(self.target, at, up), k);
        }
        for w in points.windows(2) {
            let (a, b) = (w[0], w[1]);
            let ab = [b[0] - a[0], b[1] - a[1]];
            let len2 = (ab[0] * ab[0] + ab[1] * ab[1]).max(1e-12);
            let s = (((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1]) / len2).clamp(0.0, 1.0);
            let near = [a[0] + s * ab[0], a[1] + s * ab[1]];
            let d = dist(p, near);
            let k = coverage(LINK_RADIUS - d, footprint);
            if k > 0.0 {
                // A rounded bar: the normal leans away from the axis across its width.
                let across = (d / LINK_RADIUS).min(1.0);
                let side = if d > 1e-12 { [(p[0] - near[0]) / d, (p[1] - near[1]) / d] } else { [0.0, 0.0] };
                let n = [side[0] * across, side[1] * across, (1.0 - across * across).sqrt()];
                let top = [p[0], p[1], LINK_TOP * n[2]];
                c = mix(c, self.lit(self.link, top, n), k);
            }
        }
        for (j, centre) in points[..JOINTS].iter().enumerate() {
            let radius = if j == 0 { BASE_RADIUS } else { JOINT_RADIUS };
            let k = coverage(radius - dist(p, *centre), footprint);
            if k > 0.0 {
                c = mix(c, self.lit(self.joint, [p[0], p[1], LINK_TOP], up), k);
            }
        }
        c
    }

    /// `rgb` (one frame of this camera) as a PNG file, each pixel a `scale`-wide square.
    pub fn png(&self, rgb: &[u8], scale: u32) -> Result<Vec<u8>, image::ImageError> {
        use image::ImageEncoder;
        let (w, h, s) = (self.width as usize, self.height as usize, scale.max(1) as usize);
        let mut big = Vec::with_capacity(w * h * s * s * 3);
        for row in rgb.chunks_exact(w * 3) {
            let wide: Vec<u8> =
                row.chunks_exact(3).flat_map(|px| std::iter::repeat_n(px, s).flatten()).copied().collect();
            for _ in 0..s {
                big.extend_from_slice(&wide);
            }
        }
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(&big, (w * s) as u32, (h * s) as u32, image::ColorType::Rgb8)?;
        Ok(out)
    }

    /// How much of the pixel at `p`, `footprint` wide, falls on dark checker squares: the
    /// checker averaged over the pixel (the square wave's integral is a triangle wave), so far
    /// squares fade to grey instead of flickering.
    fn checker(&self, p: [f64; 2], footprint: f64) -> f64 {
        let period = 2.0 * self.checker_m;
        let tri = |u: f64| 0.5 - (u - u.floor() - 0.5).abs();
        let wave = |x: f64| {
            let w = footprint.max(1e-6);
            (tri((x + w / 2.0) / period) - tri((x - w / 2.0) / period)) * period / w
        };
        0.5 - 0.5 * wave(p[0]) * wave(p[1])
    }

    /// Renders into a new buffer.
    pub fn image(&self, robot: &Robot, q: &[f64; JOINTS], target: [f64; 2]) -> Vec<u8> {
        let mut out = vec![0; self.frame_len()];
        self.render(robot, q, target, &mut out).expect("the buffer is one frame");
        out
    }
}

/// The true joint angles of `robot` and the target after its expert has reached for `task`'s
/// target for `ticks` control periods: a pose to take a picture of.
pub fn after_ticks(robot: &Robot, task: &Task, ticks: usize) -> ([f64; JOINTS], [f64; 2]) {
    let expert = Expert::new(robot.clone());
    let mut arm = Arm::new(robot.clone(), task.start);
    for _ in 0..ticks {
        let (p, _) = arm.measured();
        arm.step(&expert.command(&p, task.target), 1.0 / RATE_HZ);
    }
    (arm.q, task.target)
}

#[cfg(test)]
mod tests {
    use super::super::{ROBOTS, reach, robot, tasks};
    use super::*;

    #[test]
    fn the_same_state_gives_the_same_bytes() {
        let r = robot("arm-a").unwrap();
        let q = [0.2, 0.9, -0.4];
        let a = r.camera.image(&r, &q, [0.6, 0.2]);
        let b = r.camera.image(&r, &q, [0.6, 0.2]);
        assert_eq!(a, b);
        assert_ne!(a, r.camera.image(&r, &[0.25, 0.9, -0.4], [0.6, 0.2]), "the arm moved");
    }

    #[test]
    fn the_renderer_draws_the_bytes_the_camera_does() {
        for name in ROBOTS {
            let r = robot(name).unwrap();
            let fast = Renderer::new(r.camera.clone());
            let mut frame = vec![0; r.camera.frame_len()];
            let expert = Expert::new(r.clone());
            for task in tasks(9, 4, r.home) {
                let mut k = 0;
                reach(
                    &r,
                    &task,
                    &mut |obs| expert.command(&obs[..JOINTS], [obs[6], obs[7]]).to_vec(),
                    &mut |_, obs, _| {
                        k += 1;
                        if k % 15 != 0 {
                            return;
                        }
                        let q: [f64; JOINTS] = std::array::from_fn(|j| obs[j] - r.bias[j]);
                        fast.render(&r, &q, task.target, &mut frame).unwrap();
                        assert!(frame == r.camera.image(&r, &q, task.target), "{name} tick {k}");
                    },
                );
            }
            // Off the edge of the picture too.
            fast.render(&r, &[2.5, 0.3, 0.0], [-3.0, 4.0], &mut frame).unwrap();
            assert!(frame == r.camera.image(&r, &[2.5, 0.3, 0.0], [-3.0, 4.0]));
        }
    }

    #[test]
    fn a_projected_point_casts_back_onto_itself() {
        for name in ROBOTS {
            let cam = robot(name).unwrap().camera;
            for p in [[0.0, 0.0], [0.6, 0.3], [0.8, -0.5], [0.3, 0.7]] {
                let px = cam.project([p[0], p[1], 0.0]).unwrap();
                let back = cam.ray_to_plane(px).unwrap();
                assert!((back[0] - p[0]).abs() < 1e-9 && (back[1] - p[1]).abs() < 1e-9, "{name}: {p:?} -> {back:?}");
            }
            // The point looked at is the image centre.
            let c = cam.project(cam.look_at).unwrap();
            assert!((c[0] - 48.0).abs() < 1e-9 && (c[1] - 48.0).abs() < 1e-9, "{name}: {c:?}");
        }
        let down = Camera { position: [0.4, 0.0, 2.0], look_at: [0.4, 0.0, 0.0], ..Camera::reference() };
        let px = down.project([0.5, -0.1, 0.0]).unwrap();
        assert!(px[0] > 48.0 && px[1] < 48.0, "looking down, +x is up and -y right: {px:?}");
        assert_eq!(down.project([0.4, 0.0, 3.0]), None, "behind the camera");
    }

    #[test]
    fn a_buffer_of_the_wrong_size_is_refused() {
        let r = robot("arm-a").unwrap();
        let e = r.camera.render(&r, &r.home, [0.5, 0.0], &mut [0; 10]).unwrap_err();
        assert!(e.to_string().contains("holds 10 bytes; a 96x96 rgb8 frame needs 27648"), "{e}");
    }

    /// Mean absolute difference per byte.
    fn difference(a: &[u8], b: &[u8]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).sum::<f64>() / a.len() as f64
    }

    /// The mean of each channel.
    fn mean_colour(a: &[u8]) -> [f64; 3] {
        let mut m = [0.0; 3];
        for px in a.chunks(3) {
            for c in 0..3 {
                m[c] += px[c] as f64 / (a.len() / 3) as f64;
            }
        }
        m
    }

    #[test]
    fn the_robots_see_one_state_differently() {
        let a = robot("arm-a").unwrap();
        let (b, c) = (robot("arm-b").unwrap(), robot("arm-c").unwrap());
        let state = |r: &Robot| r.camera.image(&a, &a.home, [0.6, 0.25]);
        let (ia, ib, ic) = (state(&a), state(&b), state(&c));
        let (ab, ac) = (difference(&ia, &ib), difference(&ia, &ic));
        assert!(ab > 4.0 && ac > 4.0, "per byte, arm-b's picture differs by {ab:.2}, arm-c's by {ac:.2}");
        // Where one point of the floor lands: a few pixels off on arm-b, far off on arm-c.
        let shift = |r: &Robot| {
            [[0.0, 0.0], [0.6, 0.25], [0.8, -0.4]]
                .iter()
                .map(|p| {
                    let (x, y) =
                        (a.camera.project([p[0], p[1], 0.0]).unwrap(), r.camera.project([p[0], p[1], 0.0]).unwrap());
                    ((x[0] - y[0]).powi(2) + (x[1] - y[1]).powi(2)).sqrt()
                })
                .fold(0.0, f64::max)
        };
        let (sb, sc) = (shift(&b), shift(&c));
        assert!((1.0..10.0).contains(&sb), "arm-b's camera moves the scene by {sb:.1} px");
        assert!(sc > 15.0, "arm-c's camera moves the scene by {sc:.1} px");
        // The colours: a little warmer and dimmer on arm-b, clearly other on arm-c.
        let (ma, mb, mc) = (mean_colour(&ia), mean_colour(&ib), mean_colour(&ic));
        let far = |m: [f64; 3]| (0..3).map(|k| (m[k] - ma[k]).abs()).fold(0.0, f64::max);
        assert!(mb[0] - mb[2] > ma[0] - ma[2] + 3.0, "arm-b's light is warmer: {ma:?} vs {mb:?}");
        assert!(far(mc) > 2.0 * far(mb) && far(mb) > 2.0, "mean colours {ma:?}, {mb:?}, {mc:?}");
    }

    /// Pixels that change by more than 40 in some channel between two frames.
    fn changed(a: &[u8], b: &[u8]) -> usize {
        a.chunks(3).zip(b.chunks(3)).filter(|(x, y)| x.iter().zip(*y).any(|(p, q)| p.abs_diff(*q) > 40)).count()
    }

    #[test]
    fn every_target_and_the_arm_stay_in_view_on_every_robot() {
        let away = [50.0, 50.0];
        for name in ROBOTS {
            let r = robot(name).unwrap();
            let cam = &r.camera;
            let fast = Renderer::new(cam.clone());
            let mut frame = vec![0; cam.frame_len()];
            let mut image = |q: &[f64; JOINTS], t: [f64; 2]| {
                fast.render(&r, q, t, &mut frame).unwrap();
                frame.clone()
            };
            let inside = |p: [f64; 2]| {
                cam.project([p[0], p[1], 0.0]).is_some_and(|px| {
                    px[0] >= 0.0 && px[1] >= 0.0 && px[0] <= cam.width as f64 && px[1] <= cam.height as f64
                })
            };
            let expert = Expert::new(r.clone());
            let mut shown = Vec::new();
            // Every target of many wholly in view; the pixels and the arm's reach on fewer, as
            // rendering in a debug build takes milliseconds.
            for (i, task) in tasks(3, 1000, r.home).iter().enumerate() {
                let t = task.target;
                let rim = [
                    [t[0] + TARGET_RADIUS, t[1]],
                    [t[0] - TARGET_RADIUS, t[1]],
                    [t[0], t[1] + TARGET_RADIUS],
                    [t[0], t[1] - TARGET_RADIUS],
                ];
                assert!(rim.iter().all(|p| inside(*p)), "{name} task {i}: the target at {t:?} is not wholly in view");
                if i >= 60 {
                    continue;
                }
                // With the arm at the start: a link may lie over part of the target, never all.
                let seen = changed(&image(&task.start, t), &image(&task.start, away));
                assert!(seen >= 4, "{name} task {i}: the target at {t:?} shows in {seen} pixels");
                shown.push(seen);
                let mut out_of_view = 0;
                let mut ticks = 0;
                reach(
                    &r,
                    task,
                    &mut |obs| expert.command(&obs[..JOINTS], [obs[6], obs[7]]).to_vec(),
                    &mut |_, obs, _| {
                        let mut q = [0.0; JOINTS];
                        for j in 0..JOINTS {
                            q[j] = obs[j] - r.bias[j];
                        }
                        ticks += 1;
                        out_of_view += r.points(&q).iter().filter(|p| !inside(**p)).count();
                    },
                );
                assert!(
                    out_of_view * 20 <= ticks * (JOINTS + 1),
                    "{name} task {i}: {out_of_view} of {} joint positions out of view",
                    ticks * (JOINTS + 1)
                );
            }
            shown.sort();
            assert!(
                shown[shown.len() / 2] >= 15,
                "{name}: a target shows in a median of {} pixels",
                shown[shown.len() / 2]
            );
        }
    }
}
