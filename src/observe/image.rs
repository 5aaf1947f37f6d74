//! From one camera message to the tensor of one model input: decoding (raw `sensor_msgs/Image`,
//! JPEG or PNG `CompressedImage`), channel conversion, centre crop, resize and normalisation, as
//! the `[[image]]` table of the manifest declares them.
//!
//! It runs on the subscription side. The resize is separable: per-column and per-row tap tables
//! are computed once, when the first image fixes the camera's size, together with every buffer
//! the pass needs, so a raw image after the first allocates nothing (a compressed one allocates
//! inside the JPEG/PNG decoder). Each image is checked whole before a value of `out` is written,
//! so a refused image leaves the previous tensor as it was.

use std::io::Cursor;

use image::ImageDecoder;
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::io::Limits;
use serde::Deserialize;

use crate::msg::cdr::{self, CdrError};
use crate::msg::schema;
use crate::msg::{CompressedImageView, ImageView, Time};
use crate::skill::manifest::{Channels, Crop, IMAGE_TYPES, ImageInput, ImageLayout, Resize};

/// Why an image gave no tensor (counted by kind on /diagnostics, like numeric rejections).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not the topic's message type.
    #[error("undecodable image message: {0}; check that the publisher sends the topic's type")]
    Decode(#[from] CdrError),
    /// An encoding the input does not accept, or one that does not convert to its channels.
    #[error(
        "encoding `{got}` is not accepted by this input (accepted: {accepted}); publish one of those, or list a convertible one in the [[image]] table's `encodings`"
    )]
    Encoding {
        /// What the image is.
        got: String,
        /// What the input takes.
        accepted: String,
    },
    /// Dimensions, row step and data length that do not describe an image.
    #[error("malformed image: {0}")]
    Size(String),
    /// More pixels than `max_pixels`; refused before a pixel is read.
    #[error(
        "{width}x{height} image is over the input's max_pixels ({max_pixels}); lower the camera's resolution or raise max_pixels in the [[image]] table"
    )]
    TooBig {
        /// Columns.
        width: u32,
        /// Rows.
        height: u32,
        /// The input's limit.
        max_pixels: u64,
    },
    /// The camera's size differs from the one the input locked on at its first image.
    #[error(
        "the camera changed resolution from {}x{} to {}x{}; the skill keeps the first one, so set the camera back to it or restart the skill to take the new one",
        from.0, from.1, to.0, to.1
    )]
    ResolutionChanged {
        /// The locked size (width, height).
        from: (u32, u32),
        /// This image's size.
        to: (u32, u32),
    },
    /// A JPEG or PNG that does not decode (truncated, damaged, not an image).
    #[error("corrupt compressed image: {0}; check the camera's encoder and that messages arrive whole")]
    Corrupt(String),
}

/// Kinds of image rejection, for counting; [`ImageError::kind`] indexes it.
pub const IMAGE_KINDS: [&str; 6] = ["decode", "encoding", "size", "too_big", "resolution_changed", "corrupt"];

impl ImageError {
    /// Index into [`IMAGE_KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            ImageError::Decode(_) => 0,
            ImageError::Encoding { .. } => 1,
            ImageError::Size(_) => 2,
            ImageError::TooBig { .. } => 3,
            ImageError::ResolutionChanged { .. } => 4,
            ImageError::Corrupt(_) => 5,
        }
    }
}

/// How the source pixels are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pixels {
    /// `n` interleaved 8-bit channels: grey, grey+alpha, colour (RGB, or BGR), colour+alpha.
    U8 { n: usize, bgr: bool },
    /// `n` interleaved 16-bit channels, as `U8`.
    U16 { n: usize, big: bool },
    /// One 32-bit float (depth).
    F32 { big: bool },
}

impl Pixels {
    /// The layout of a raw encoding.
    fn of_encoding(encoding: &str, big: bool) -> Option<Pixels> {
        Some(match encoding {
            "rgb8" => Pixels::U8 { n: 3, bgr: false },
            "bgr8" => Pixels::U8 { n: 3, bgr: true },
            "mono8" => Pixels::U8 { n: 1, bgr: false },
            "16UC1" | "mono16" => Pixels::U16 { n: 1, big },
            "32FC1" => Pixels::F32 { big },
            _ => return None,
        })
    }

    /// The layout of what the `image` crate decoded (16-bit in native byte order).
    fn of_color(color: image::ColorType) -> Option<Pixels> {
        use image::ColorType as C;
        let big = cfg!(target_endian = "big");
        Some(match color {
            C::L8 => Pixels::U8 { n: 1, bgr: false },
            C::La8 => Pixels::U8 { n: 2, bgr: false },
            C::Rgb8 => Pixels::U8 { n: 3, bgr: false },
            C::Rgba8 => Pixels::U8 { n: 4, bgr: false },
            C::L16 => Pixels::U16 { n: 1, big },
            C::La16 => Pixels::U16 { n: 2, big },
            C::Rgb16 => Pixels::U16 { n: 3, big },
            C::Rgba16 => Pixels::U16 { n: 4, big },
            _ => return None,
        })
    }

    fn bytes_per_pixel(self) -> usize {
        match self {
            Pixels::U8 { n, .. } => n,
            Pixels::U16 { n, .. } => 2 * n,
            Pixels::F32 { .. } => 4,
        }
    }

    /// Whether these pixels give `to`: depth needs one 16-bit or float channel (a reading, not a
    /// brightness); colour and grey need brightness, 8- or 16-bit.
    fn converts_to(self, to: Channels) -> bool {
        matches!(
            (self, to),
            (Pixels::U16 { n: 1, .. } | Pixels::F32 { .. }, Channels::Depth)
                | (Pixels::U8 { .. } | Pixels::U16 { .. }, Channels::Rgb | Channels::Bgr | Channels::Mono)
        )
    }
}

/// One output sample's taps: source indices `first..first + n`, weights `weights[w..w + n]`.
#[derive(Debug, Clone, Copy)]
struct Tap {
    first: u32,
    w: u32,
    n: u32,
}

/// The taps of every output sample along one axis.
#[derive(Debug, Default)]
struct Taps {
    taps: Vec<Tap>,
    weights: Vec<f32>,
}

impl Taps {
    /// Taps of `out` samples from `src` along one axis, for `resize`. Zero weights are dropped, so
    /// a bilinear identity reads one source pixel per output pixel.
    fn new(resize: Resize, src: usize, out: usize) -> Taps {
        let mut t = Taps { taps: Vec::with_capacity(out), weights: Vec::new() };
        let s = src as f64 / out as f64;
        for d in 0..out {
            let w = t.weights.len() as u32;
            let mut first = None;
            let mut push = |t: &mut Taps, k: usize, wk: f64| {
                if wk > 1e-12 {
                    first.get_or_insert(k);
                    t.weights.push(wk as f32);
                }
            };
            match resize {
                Resize::Bilinear => {
                    // Half-pixel centres, clamped at the edges: OpenCV INTER_LINEAR, torch
                    // interpolate(bilinear, align_corners=False).
                    let x = ((d as f64 + 0.5) * s - 0.5).max(0.0);
                    let mut k = x.floor() as usize;
                    let mut f = x - k as f64;
                    if k >= src - 1 {
                        k = src - 1;
                        f = 0.0;
                    }
                    push(&mut t, k, 1.0 - f);
                    push(&mut t, k + 1, f);
                }
                Resize::Area => {
                    // The exact share of each source pixel in [d*s, (d+1)*s).
                    let (a, b) = (d as f64 * s, ((d + 1) as f64 * s).min(src as f64));
                    for k in a.floor() as usize..(b.ceil() as usize).min(src) {
                        push(&mut t, k, (((k + 1) as f64).min(b) - (k as f64).max(a)) / s);
                    }
                }
            }
            let n = t.weights.len() as u32 - w;
            t.taps.push(Tap { first: first.unwrap_or(0) as u32, w, n });
        }
        t
    }
}

/// What the first image of a size fixed: the crop, the tap tables and the buffers of one pass.
#[derive(Debug)]
struct Plan {
    source: (u32, u32),
    x0: usize,
    y0: usize,
    crop_w: usize,
    crop_h: usize,
    cols: Taps,
    rows: Taps,
    /// Which rows of the crop some output row reads.
    needed: Vec<bool>,
    /// One crop row in the model's channels.
    row: Vec<f32>,
    /// Crop rows resized horizontally: `crop_h × width × channels`.
    mid: Vec<f32>,
    /// One output row before normalisation.
    acc: Vec<f32>,
}

/// Turns the images of one `[[image]]` input into its model tensor.
#[derive(Debug)]
pub struct ImagePipeline {
    width: usize,
    height: usize,
    channels: Channels,
    accepted: Vec<String>,
    resize: Resize,
    crop: Crop,
    layout: ImageLayout,
    compressed: bool,
    /// Per channel, `scale / std` and `-mean / std`: `(v × scale - mean) / std = v × gain + bias`.
    gain: [f32; 3],
    bias: [f32; 3],
    max_pixels: u64,
    plan: Option<Plan>,
    /// A compressed image's decoded pixels (kept for the next one).
    decoded: Vec<u8>,
}

/// sensor_msgs/Image read without allocating: the strings as their CDR bytes (a CDR string is its
/// length with the NUL, then the bytes, which reads as a byte sequence).
#[derive(Deserialize)]
struct RawImage<'a> {
    _stamp: Time,
    #[serde(borrow, with = "serde_bytes")]
    _frame_id: &'a [u8],
    height: u32,
    width: u32,
    #[serde(borrow, with = "serde_bytes")]
    encoding: &'a [u8],
    is_bigendian: u8,
    step: u32,
    #[serde(borrow, with = "serde_bytes")]
    data: &'a [u8],
}

/// sensor_msgs/CompressedImage read without allocating, as [`RawImage`].
#[derive(Deserialize)]
struct RawCompressed<'a> {
    _stamp: Time,
    #[serde(borrow, with = "serde_bytes")]
    _frame_id: &'a [u8],
    #[serde(borrow, with = "serde_bytes")]
    format: &'a [u8],
    #[serde(borrow, with = "serde_bytes")]
    data: &'a [u8],
}

/// A CDR string's bytes as text (without the NUL).
fn cdr_str<'a>(bytes: &'a [u8], type_name: &'static str) -> Result<&'a str, CdrError> {
    let text = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    std::str::from_utf8(text).map_err(|e| CdrError::Body { type_name, message: e.to_string() })
}

/// The compressed formats this module decodes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Jpeg,
    Png,
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_MAGIC: &[u8] = &[0xff, 0xd8, 0xff];
/// compressed_depth_image_transport puts a 12-byte header (format, two depth parameters) before
/// its PNG.
const DEPTH_HEADER: usize = 12;

fn magic(data: &[u8]) -> Option<Format> {
    if data.starts_with(JPEG_MAGIC) {
        Some(Format::Jpeg)
    } else if data.starts_with(PNG_MAGIC) {
        Some(Format::Png)
    } else {
        None
    }
}

impl ImagePipeline {
    /// A pipeline for `input` (validated by `Manifest::validate`); it locks on the size of the
    /// first image it accepts.
    pub fn new(input: &ImageInput) -> ImagePipeline {
        let c = input.channels.count();
        let mut gain = [1.0; 3];
        let mut bias = [0.0; 3];
        for i in 0..c.min(input.mean.len()).min(input.std.len()) {
            gain[i] = (input.scale / input.std[i]) as f32;
            bias[i] = (-input.mean[i] / input.std[i]) as f32;
        }
        let accepted = if input.encodings.is_empty() {
            input.channels.encodings().iter().map(|e| e.to_string()).collect()
        } else {
            input.encodings.clone()
        };
        ImagePipeline {
            width: input.width,
            height: input.height,
            channels: input.channels,
            accepted,
            resize: input.resize,
            crop: input.crop,
            layout: input.layout,
            compressed: schema::full_type_name(&input.msg_type) == IMAGE_TYPES[1],
            gain,
            bias,
            max_pixels: input.max_pixels,
            plan: None,
            decoded: Vec::new(),
        }
    }

    /// The camera resolution this pipeline locked on (the first accepted image's), if any.
    pub fn source_size(&self) -> Option<(u32, u32)> {
        self.plan.as_ref().map(|p| p.source)
    }

    /// CDR bytes of the input's type (Image or CompressedImage) -> the tensor (len
    /// `input.tensor_len()`), normalised (`(v × scale - mean[c]) / std[c]`) in the input's layout.
    ///
    /// # Panics
    /// If `out` is not `tensor_len()` long (the caller sizes it from the same manifest).
    pub fn process_cdr(&mut self, bytes: &[u8], out: &mut [f32]) -> Result<(), ImageError> {
        if self.compressed {
            let m: RawCompressed = cdr::decode_borrowed(bytes, IMAGE_TYPES[1])?;
            let format = cdr_str(m.format, IMAGE_TYPES[1])?;
            self.compressed_parts(format, m.data, out)
        } else {
            let m: RawImage = cdr::decode_borrowed(bytes, IMAGE_TYPES[0])?;
            let encoding = cdr_str(m.encoding, IMAGE_TYPES[0])?;
            self.raw_parts(m.width, m.height, encoding, m.is_bigendian != 0, m.step, m.data, out)
        }
    }

    /// An uncompressed image -> the tensor, as [`ImagePipeline::process_cdr`].
    pub fn process_image(&mut self, img: &ImageView<'_>, out: &mut [f32]) -> Result<(), ImageError> {
        self.raw_parts(img.width, img.height, &img.encoding, img.is_bigendian != 0, img.step, img.data, out)
    }

    /// A JPEG or PNG image -> the tensor, as [`ImagePipeline::process_cdr`].
    pub fn process_compressed(&mut self, img: &CompressedImageView<'_>, out: &mut [f32]) -> Result<(), ImageError> {
        self.compressed_parts(&img.format, img.data, out)
    }

    fn check_out(&self, out: &[f32]) {
        let need = self.width * self.height * self.channels.count();
        assert_eq!(out.len(), need, "the image tensor buffer must hold width × height × channels values");
    }

    fn encoding_error(&self, got: &str) -> ImageError {
        ImageError::Encoding { got: got.to_string(), accepted: self.accepted.join(", ") }
    }

    /// Refuses an empty or too big image, or one of another size than the locked one.
    fn check_size(&self, width: u32, height: u32) -> Result<(), ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::Size(format!(
                "{width}x{height} image has no pixels; check the camera driver's output"
            )));
        }
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(ImageError::TooBig { width, height, max_pixels: self.max_pixels });
        }
        match &self.plan {
            Some(p) if p.source != (width, height) => {
                Err(ImageError::ResolutionChanged { from: p.source, to: (width, height) })
            }
            _ => Ok(()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn raw_parts(
        &mut self,
        width: u32,
        height: u32,
        encoding: &str,
        big: bool,
        step: u32,
        data: &[u8],
        out: &mut [f32],
    ) -> Result<(), ImageError> {
        self.check_out(out);
        let pixels = match Pixels::of_encoding(encoding, big) {
            Some(p) if self.accepted.iter().any(|a| a == encoding) && p.converts_to(self.channels) => p,
            _ => return Err(self.encoding_error(encoding)),
        };
        self.check_size(width, height)?;
        let row_bytes = u64::from(width) * pixels.bytes_per_pixel() as u64;
        if u64::from(step) < row_bytes {
            return Err(ImageError::Size(format!(
                "step {step} is below width {width} × {} bytes per pixel ({encoding}) = {row_bytes}; the publisher's step or encoding is wrong",
                pixels.bytes_per_pixel()
            )));
        }
        let need = u64::from(step) * u64::from(height);
        if (data.len() as u64) < need {
            return Err(ImageError::Size(format!(
                "{} data bytes, step {step} × height {height} needs {need}; the message is cut short or its header is wrong",
                data.len()
            )));
        }
        self.run(width, height, pixels, step as usize, data, out);
        Ok(())
    }

    fn compressed_parts(&mut self, format: &str, data: &[u8], out: &mut [f32]) -> Result<(), ImageError> {
        self.check_out(out);
        let (fmt, file) = self.detect(format, data)?;
        let name = match fmt {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
        };
        if !self.accepted.iter().any(|a| a == name) {
            return Err(self.encoding_error(name));
        }
        let corrupt = |e: image::ImageError| ImageError::Corrupt(format!("{name}: {e}"));
        // What a decoder may allocate: the largest pixels accepted at 8 bytes each (RGBA16), and
        // some room for its tables.
        let mut limits = Limits::default();
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8).saturating_add(1 << 20));
        let mut decoded = std::mem::take(&mut self.decoded);
        let result = match fmt {
            Format::Jpeg => {
                let mut d = JpegDecoder::new(Cursor::new(file)).map_err(corrupt)?;
                self.prepare(&mut d, name, &mut limits, &mut decoded)
                    .and_then(|pixels| d.read_image(&mut decoded).map_err(corrupt).map(|()| pixels))
            }
            Format::Png => {
                let mut d = PngDecoder::with_limits(Cursor::new(file), limits.clone()).map_err(corrupt)?;
                self.prepare(&mut d, name, &mut limits, &mut decoded)
                    .and_then(|pixels| d.read_image(&mut decoded).map_err(corrupt).map(|()| pixels))
            }
        };
        let done = result.map(|(w, h, pixels)| {
            let step = w as usize * pixels.bytes_per_pixel();
            self.run(w, h, pixels, step, &decoded, out)
        });
        self.decoded = decoded;
        done
    }

    /// Which decoder, and the file's bytes: by the bytes' magic, as the format string may be
    /// anything image_transport or a driver writes (`jpeg`, `rgb8; jpeg compressed bgr8`,
    /// `16UC1; compressedDepth png`).
    fn detect<'a>(&self, format: &str, data: &'a [u8]) -> Result<(Format, &'a [u8]), ImageError> {
        if let Some(f) = magic(data) {
            return Ok((f, data));
        }
        let lower = format.to_ascii_lowercase();
        if lower.contains("compresseddepth") {
            if lower.starts_with("32fc1") {
                return Err(self.encoding_error(&format!("{format} (quantised inverse depth)")));
            }
            if let Some(png) = data.get(DEPTH_HEADER..).filter(|d| d.starts_with(PNG_MAGIC)) {
                return Ok((Format::Png, png));
            }
        }
        let named = if lower.contains("png") {
            "PNG"
        } else if lower.contains("jpeg") || lower.contains("jpg") {
            "JPEG"
        } else {
            return Err(self.encoding_error(format));
        };
        Err(ImageError::Corrupt(format!(
            "format `{format}` says {named} but the {} bytes do not start as one",
            data.len()
        )))
    }

    /// Reads the decoder's header: refuses the image before its pixels are decoded, sizes the
    /// decode buffer and tightens the decoder's limits to the image.
    fn prepare<'a, D: ImageDecoder<'a>>(
        &self,
        d: &mut D,
        name: &str,
        limits: &mut Limits,
        decoded: &mut Vec<u8>,
    ) -> Result<(u32, u32, Pixels), ImageError> {
        let (w, h) = d.dimensions();
        self.check_size(w, h)?;
        let color = d.color_type();
        let pixels = match Pixels::of_color(color) {
            Some(p) if p.converts_to(self.channels) => p,
            _ => return Err(self.encoding_error(&format!("{name} ({color:?})"))),
        };
        limits.max_image_width = Some(w);
        limits.max_image_height = Some(h);
        d.set_limits(limits.clone()).map_err(|e| ImageError::Corrupt(format!("{name}: {e}")))?;
        decoded.resize(d.total_bytes() as usize, 0);
        Ok((w, h, pixels))
    }

    /// Locks on the first size, then crops, converts, resizes and normalises into `out`.
    fn run(&mut self, width: u32, height: u32, pixels: Pixels, step: usize, data: &[u8], out: &mut [f32]) {
        let (w, h, c) = (self.width, self.height, self.channels.count());
        let (resize, crop) = (self.resize, self.crop);
        let plan = self.plan.get_or_insert_with(|| Plan::new((width, height), resize, crop, w, h, c));
        let wc = w * c;
        for y in 0..plan.crop_h {
            if !plan.needed[y] {
                continue;
            }
            let start = (plan.y0 + y) * step + plan.x0 * pixels.bytes_per_pixel();
            let src = &data[start..start + plan.crop_w * pixels.bytes_per_pixel()];
            convert_row(pixels, self.channels, src, &mut plan.row);
            let mid = &mut plan.mid[y * wc..(y + 1) * wc];
            if c == 3 {
                horizontal::<3>(&plan.row, &plan.cols, mid);
            } else {
                horizontal::<1>(&plan.row, &plan.cols, mid);
            }
        }
        for (oy, t) in plan.rows.taps.iter().enumerate() {
            plan.acc.fill(0.0);
            let ws = &plan.rows.weights[t.w as usize..(t.w + t.n) as usize];
            for (k, &wk) in ws.iter().enumerate() {
                let r = t.first as usize + k;
                for (a, v) in plan.acc.iter_mut().zip(&plan.mid[r * wc..(r + 1) * wc]) {
                    *a += wk * v;
                }
            }
            match self.layout {
                ImageLayout::Nhwc => {
                    let dst = &mut out[oy * wc..(oy + 1) * wc];
                    for (px, src) in dst.chunks_exact_mut(c).zip(plan.acc.chunks_exact(c)) {
                        for ch in 0..c {
                            px[ch] = src[ch] * self.gain[ch] + self.bias[ch];
                        }
                    }
                }
                ImageLayout::Nchw => {
                    for ch in 0..c {
                        let dst = &mut out[(ch * h + oy) * w..(ch * h + oy + 1) * w];
                        for (d, src) in dst.iter_mut().zip(plan.acc.chunks_exact(c)) {
                            *d = src[ch] * self.gain[ch] + self.bias[ch];
                        }
                    }
                }
            }
        }
    }
}

impl Plan {
    fn new(source: (u32, u32), resize: Resize, crop: Crop, w: usize, h: usize, c: usize) -> Plan {
        let (sw, sh) = (source.0 as usize, source.1 as usize);
        let (x0, y0, crop_w, crop_h) = match crop {
            Crop::None => (0, 0, sw, sh),
            Crop::Centre => centre_crop(sw, sh, w, h),
        };
        let cols = Taps::new(resize, crop_w, w);
        let rows = Taps::new(resize, crop_h, h);
        let mut needed = vec![false; crop_h];
        for t in &rows.taps {
            needed[t.first as usize..(t.first + t.n) as usize].fill(true);
        }
        Plan {
            source,
            x0,
            y0,
            crop_w,
            crop_h,
            cols,
            rows,
            needed,
            row: vec![0.0; crop_w * c],
            mid: vec![0.0; crop_h * w * c],
            acc: vec![0.0; w * c],
        }
    }
}

/// The largest centred region of `sw × sh` with the aspect ratio `w : h`, as (x0, y0, width,
/// height); the margin is split with its odd pixel on the far side.
fn centre_crop(sw: usize, sh: usize, w: usize, h: usize) -> (usize, usize, usize, usize) {
    if sw * h > sh * w {
        let cw = ((2 * sh * w + h) / (2 * h)).clamp(1, sw);
        ((sw - cw) / 2, 0, cw, sh)
    } else {
        let ch = ((2 * sw * h + w) / (2 * w)).clamp(1, sh);
        (0, (sh - ch) / 2, sw, ch)
    }
}

/// One row of source pixels -> the model's channels as floats, before scale.
fn convert_row(pixels: Pixels, to: Channels, src: &[u8], out: &mut [f32]) {
    // 16-bit brightness is brought to the 8-bit range, so one `scale` serves both.
    const U16_TO_U8: f32 = 1.0 / 257.0;
    match pixels {
        // Grey stays exact: the luma weights sum to 1 only up to rounding.
        Pixels::U8 { n: n @ (1 | 2), .. } if to == Channels::Mono => {
            for (o, p) in out.iter_mut().zip(src.chunks_exact(n)) {
                *o = f32::from(p[0]);
            }
        }
        Pixels::U16 { n: n @ (1 | 2), big } if to == Channels::Mono => {
            for (o, p) in out.iter_mut().zip(src.chunks_exact(2 * n)) {
                *o = f32::from(u16_at(p, big)) * U16_TO_U8;
            }
        }
        Pixels::U8 { n, bgr } => colour_row(src.chunks_exact(n).map(|p| rgb(p, bgr, f32::from)), to, out),
        Pixels::U16 { n, big } if to != Channels::Depth => {
            let read = |b: &[u8]| f32::from(u16_at(b, big)) * U16_TO_U8;
            colour_row(src.chunks_exact(2 * n).map(|p| rgb16(p, n, read)), to, out)
        }
        Pixels::U16 { big, .. } => {
            for (o, p) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f32::from(u16_at(p, big));
            }
        }
        Pixels::F32 { big } => {
            for (o, p) in out.iter_mut().zip(src.chunks_exact(4)) {
                let b = [p[0], p[1], p[2], p[3]];
                let v = if big { f32::from_be_bytes(b) } else { f32::from_le_bytes(b) };
                *o = if v.is_finite() { v } else { 0.0 };
            }
        }
    }
}

fn u16_at(b: &[u8], big: bool) -> u16 {
    if big { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) }
}

/// (r, g, b) of an 8-bit pixel of 1 to 4 channels (grey is replicated, alpha ignored).
fn rgb(p: &[u8], bgr: bool, f: impl Fn(u8) -> f32) -> [f32; 3] {
    match (p.len(), bgr) {
        (3 | 4, false) => [f(p[0]), f(p[1]), f(p[2])],
        (3 | 4, true) => [f(p[2]), f(p[1]), f(p[0])],
        _ => [f(p[0]); 3],
    }
}

/// (r, g, b) of a 16-bit pixel of `n` channels.
fn rgb16(p: &[u8], n: usize, read: impl Fn(&[u8]) -> f32) -> [f32; 3] {
    if n >= 3 { [read(&p[0..2]), read(&p[2..4]), read(&p[4..6])] } else { [read(&p[0..2]); 3] }
}

fn colour_row(px: impl Iterator<Item = [f32; 3]>, to: Channels, out: &mut [f32]) {
    match to {
        Channels::Rgb => {
            for (o, [r, g, b]) in out.chunks_exact_mut(3).zip(px) {
                o.copy_from_slice(&[r, g, b]);
            }
        }
        Channels::Bgr => {
            for (o, [r, g, b]) in out.chunks_exact_mut(3).zip(px) {
                o.copy_from_slice(&[b, g, r]);
            }
        }
        // ITU-R BT.601 luma, as OpenCV's RGB2GRAY.
        Channels::Mono | Channels::Depth => {
            for (o, [r, g, b]) in out.iter_mut().zip(px) {
                *o = 0.299 * r + 0.587 * g + 0.114 * b;
            }
        }
    }
}

/// Resizes one row of `C`-channel pixels along x with the column taps.
fn horizontal<const C: usize>(row: &[f32], cols: &Taps, out: &mut [f32]) {
    for (o, t) in out.chunks_exact_mut(C).zip(&cols.taps) {
        let ws = &cols.weights[t.w as usize..(t.w + t.n) as usize];
        let px = &row[t.first as usize * C..(t.first + t.n) as usize * C];
        let mut acc = [0.0f32; C];
        for (&wk, p) in ws.iter().zip(px.chunks_exact(C)) {
            for ch in 0..C {
                acc[ch] += wk * p[ch];
            }
        }
        o.copy_from_slice(&acc);
    }
}

#[cfg(test)]
mod tests {
    use image::ImageEncoder;
    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::png::PngEncoder;

    use super::*;
    use crate::msg::{CompressedImage, Header, Image, RosMessage};
    use crate::skill::manifest::DEFAULT_MAX_PIXELS;

    /// An input of the model size `w × h`, values as they are (scale 1, mean 0, std 1), NCHW.
    fn input(w: usize, h: usize, channels: Channels) -> ImageInput {
        let c = channels.count();
        ImageInput {
            topic: "/camera/image".into(),
            msg_type: IMAGE_TYPES[0].into(),
            input: "image".into(),
            width: w,
            height: h,
            channels,
            encodings: vec![],
            resize: Resize::Bilinear,
            crop: Crop::None,
            scale: 1.0,
            mean: vec![0.0; c],
            std: vec![1.0; c],
            layout: ImageLayout::Nchw,
            max_age_ms: 100.0,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }

    fn view<'a>(w: u32, h: u32, encoding: &str, step: u32, data: &'a [u8]) -> ImageView<'a> {
        ImageView {
            header: Header::default(),
            height: h,
            width: w,
            encoding: encoding.into(),
            is_bigendian: 0,
            step,
            data,
        }
    }

    fn compressed<'a>(format: &str, data: &'a [u8]) -> CompressedImageView<'a> {
        CompressedImageView { header: Header::default(), format: format.into(), data }
    }

    /// Runs one raw image through a fresh pipeline for `im`.
    fn run(im: &ImageInput, img: &ImageView<'_>) -> Result<Vec<f32>, ImageError> {
        let mut out = vec![f32::NAN; im.tensor_len()];
        ImagePipeline::new(im).process_image(img, &mut out).map(|()| out)
    }

    /// Interleaved 8-bit pixels of a deterministic pattern.
    fn pattern(w: usize, h: usize, c: usize) -> Vec<u8> {
        (0..w * h * c).map(|i| ((i * 37 + (i / c / w) * 91 + (i % 7) * 29) % 256) as u8).collect()
    }

    /// Interleaved `c`-channel values -> NCHW planes.
    fn planes(hwc: &[f32], c: usize) -> Vec<f32> {
        (0..c).flat_map(|ch| hwc.iter().skip(ch).step_by(c).copied()).collect()
    }

    fn to_f32(v: &[u8]) -> Vec<f32> {
        v.iter().map(|&b| f32::from(b)).collect()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "{what}: value {i} is {g}, want {w} (tolerance {tol})");
        }
    }

    fn luma(rgb: &[u8]) -> Vec<f32> {
        rgb.chunks_exact(3)
            .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
            .collect()
    }

    #[test]
    fn every_8_bit_encoding_converts_to_every_channel_order() {
        let (w, h) = (4, 3);
        let rgb = pattern(w, h, 3);
        let bgr: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
        let grey = pattern(w, h, 1);
        let rev =
            |v: &[u8]| -> Vec<f32> { v.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).map(f32::from).collect() };
        let rep = |g: &[u8]| -> Vec<f32> { g.iter().flat_map(|&v| [f32::from(v); 3]).collect() };
        let cases: [(&str, &[u8], Channels, Vec<f32>); 9] = [
            ("rgb8", &rgb, Channels::Rgb, to_f32(&rgb)),
            ("rgb8", &rgb, Channels::Bgr, rev(&rgb)),
            ("rgb8", &rgb, Channels::Mono, luma(&rgb)),
            ("bgr8", &bgr, Channels::Rgb, to_f32(&rgb)),
            ("bgr8", &bgr, Channels::Bgr, rev(&rgb)),
            ("bgr8", &bgr, Channels::Mono, luma(&rgb)),
            ("mono8", &grey, Channels::Rgb, rep(&grey)),
            ("mono8", &grey, Channels::Bgr, rep(&grey)),
            ("mono8", &grey, Channels::Mono, to_f32(&grey)),
        ];
        for (enc, data, ch, hwc) in cases {
            let bpp = data.len() / (w * h);
            let got = run(&input(w, h, ch), &view(w as u32, h as u32, enc, (w * bpp) as u32, data)).unwrap();
            assert_close(&got, &planes(&hwc, ch.count()), 1e-4, &format!("{enc} -> {ch:?}"));
        }
    }

    #[test]
    fn depth_encodings_honour_byte_order_and_zero_what_is_not_a_reading() {
        let (w, h) = (3, 2);
        let mm: [u16; 6] = [0, 1, 1000, 65535, 258, 4097];
        let want: Vec<f32> = mm.iter().map(|&v| f32::from(v)).collect();
        for enc in ["16UC1", "mono16"] {
            for big in [false, true] {
                let data: Vec<u8> =
                    mm.iter().flat_map(|v| if big { v.to_be_bytes() } else { v.to_le_bytes() }).collect();
                let mut img = view(w, h, enc, 2 * w, &data);
                img.is_bigendian = u8::from(big);
                assert_eq!(run(&input(3, 2, Channels::Depth), &img).unwrap(), want, "{enc}, big-endian {big}");
            }
        }
        let metres = [0.5f32, f32::NAN, f32::INFINITY, 0.0, -f32::INFINITY, 2.25];
        for big in [false, true] {
            let data: Vec<u8> =
                metres.iter().flat_map(|v| if big { v.to_be_bytes() } else { v.to_le_bytes() }).collect();
            let mut img = view(w, h, "32FC1", 4 * w, &data);
            img.is_bigendian = u8::from(big);
            assert_eq!(run(&input(3, 2, Channels::Depth), &img).unwrap(), [0.5, 0.0, 0.0, 0.0, 0.0, 2.25]);
        }
        // Depth is a reading, not a brightness: it converts to nothing else, and nothing to it.
        let data = [0u8; 12];
        for (enc, ch) in [("16UC1", Channels::Rgb), ("32FC1", Channels::Mono), ("mono8", Channels::Depth)] {
            let e = run(&input(3, 2, ch), &view(w, h, enc, 6, &data)).unwrap_err();
            assert_eq!(e.kind(), 1, "{enc} -> {ch:?}: {e}");
        }
    }

    #[test]
    fn layouts_hold_the_same_normalised_values() {
        let (w, h) = (5, 4);
        let rgb = pattern(w, h, 3);
        let mut im = input(w, h, Channels::Rgb);
        im.scale = 1.0 / 255.0;
        im.mean = vec![0.485, 0.456, 0.406];
        im.std = vec![0.229, 0.224, 0.225];
        let nchw = run(&im, &view(5, 4, "rgb8", 15, &rgb)).unwrap();
        im.layout = ImageLayout::Nhwc;
        let nhwc = run(&im, &view(5, 4, "rgb8", 15, &rgb)).unwrap();
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let v = f64::from(rgb[(y * w + x) * 3 + c]);
                    let want = ((v / 255.0 - im.mean[c]) / im.std[c]) as f32;
                    assert!((nchw[(c * h + y) * w + x] - want).abs() < 1e-5);
                    assert!((nhwc[(y * w + x) * 3 + c] - want).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn padded_rows_give_the_same_tensor() {
        let (w, h) = (7, 5);
        let rgb = pattern(w, h, 3);
        let step = w * 3 + 5;
        let padded: Vec<u8> = rgb.chunks_exact(w * 3).flat_map(|r| r.iter().copied().chain([0xee; 5])).collect();
        let im = input(4, 3, Channels::Bgr);
        let tight = run(&im, &view(7, 5, "rgb8", 21, &rgb)).unwrap();
        assert_eq!(run(&im, &view(7, 5, "rgb8", step as u32, &padded)).unwrap(), tight);
    }

    #[test]
    fn centre_crop_cuts_the_largest_centred_region_of_the_models_aspect() {
        assert_eq!(centre_crop(640, 480, 96, 96), (80, 0, 480, 480));
        assert_eq!(centre_crop(480, 640, 96, 96), (0, 80, 480, 480));
        assert_eq!(centre_crop(640, 480, 64, 48), (0, 0, 640, 480));
        assert_eq!(centre_crop(7, 2, 2, 2), (2, 0, 2, 2));
        assert_eq!(centre_crop(1, 1000, 1000, 1), (0, 499, 1, 1));
        // A wide image into a square model: the tensor is the middle columns, unscaled.
        let grey = pattern(6, 2, 1);
        let mut im = input(2, 2, Channels::Mono);
        im.crop = Crop::Centre;
        let got = run(&im, &view(6, 2, "mono8", 6, &grey)).unwrap();
        assert_eq!(got, to_f32(&[grey[2], grey[3], grey[8], grey[9]]));
    }

    #[derive(Deserialize)]
    struct Golden {
        cases: Vec<GoldenCase>,
    }

    #[derive(Deserialize)]
    struct GoldenCase {
        name: String,
        src_width: u32,
        src_height: u32,
        channels: usize,
        src: Vec<u8>,
        width: usize,
        height: usize,
        crop: bool,
        nchw: Vec<f32>,
    }

    #[test]
    fn bilinear_matches_torch_interpolate() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images/bilinear.json");
        let golden: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(golden.cases.len(), 5);
        for g in golden.cases {
            let (ch, enc) = if g.channels == 3 { (Channels::Rgb, "rgb8") } else { (Channels::Mono, "mono8") };
            let mut im = input(g.width, g.height, ch);
            if g.crop {
                im.crop = Crop::Centre;
            }
            let step = g.src_width * g.channels as u32;
            let got = run(&im, &view(g.src_width, g.src_height, enc, step, &g.src)).unwrap();
            // The fixture holds 4 decimals.
            assert_close(&got, &g.nchw, 2e-3, &g.name);
        }
    }

    /// Means of `f × f` blocks of a one-channel image.
    fn block_means(v: &[u8], w: usize, f: usize) -> Vec<f32> {
        let (ow, oh) = (w / f, v.len() / w / f);
        let mut out = vec![];
        for oy in 0..oh {
            for ox in 0..ow {
                let s: u32 = (0..f * f).map(|i| u32::from(v[(oy * f + i / f) * w + ox * f + i % f])).sum();
                out.push(s as f32 / (f * f) as f32);
            }
        }
        out
    }

    #[test]
    fn area_is_the_block_mean_for_integer_factors() {
        let grey = pattern(24, 12, 1);
        for f in [1, 2, 3, 4, 6] {
            let mut im = input(24 / f, 12 / f, Channels::Mono);
            im.resize = Resize::Area;
            let got = run(&im, &view(24, 12, "mono8", 24, &grey)).unwrap();
            assert_close(&got, &block_means(&grey, 24, f), 1e-3, &format!("area, factor {f}"));
        }
        // Halving, bilinear samples each 2×2 block at its centre: the block mean too.
        let im = input(12, 6, Channels::Mono);
        let got = run(&im, &view(24, 12, "mono8", 24, &grey)).unwrap();
        assert_close(&got, &block_means(&grey, 24, 2), 1e-3, "bilinear, factor 2");
    }

    #[test]
    fn area_weighs_fractional_coverage_exactly() {
        // 3 columns into 2: each output column covers 1.5 source columns, [0, 1.5) and [1.5, 3):
        // (0 + 30/2) / 1.5 = 10 and (30/2 + 90) / 1.5 = 70. Rows: 2 into 1, their mean.
        let mut im = input(2, 1, Channels::Mono);
        im.resize = Resize::Area;
        let got = run(&im, &view(3, 2, "mono8", 3, &[0, 30, 90, 0, 30, 90])).unwrap();
        assert_close(&got, &[10.0, 70.0], 1e-4, "3 -> 2");
        // 5 into 3: [0, 5/3) [5/3, 10/3) [10/3, 5) of 0, 30, 60, 90, 120: weights 3/5 of 1, 2/5
        // of 2/3, ... by hand: (0 + 30 × 2/3) × 3/5 = 12; (30/3 + 60 + 90/3) × 3/5 = 60;
        // (90 × 2/3 + 120) × 3/5 = 108.
        let mut im = input(3, 1, Channels::Mono);
        im.resize = Resize::Area;
        let got = run(&im, &view(5, 1, "mono8", 5, &[0, 30, 60, 90, 120])).unwrap();
        assert_close(&got, &[12.0, 60.0, 108.0], 1e-4, "5 -> 3");
    }

    /// A smooth RGB image (JPEG keeps it within a few levels).
    fn smooth(w: usize, h: usize) -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) * 2) as u8]))
            .collect()
    }

    fn jpeg(rgb: &[u8], w: u32, h: u32, color: image::ColorType) -> Vec<u8> {
        let mut out = vec![];
        JpegEncoder::new_with_quality(&mut out, 95).encode(rgb, w, h, color).unwrap();
        out
    }

    fn png(data: &[u8], w: u32, h: u32, color: image::ColorType) -> Vec<u8> {
        let mut out = vec![];
        PngEncoder::new(&mut out).write_image(data, w, h, color).unwrap();
        out
    }

    #[test]
    fn jpeg_and_png_agree_with_the_raw_path() {
        let (w, h) = (64u32, 48u32);
        let rgb = smooth(w as usize, h as usize);
        let grey: Vec<u8> = luma(&rgb).iter().map(|v| v.round() as u8).collect();
        let jpg = jpeg(&rgb, w, h, image::ColorType::Rgb8);
        let png_rgb = png(&rgb, w, h, image::ColorType::Rgb8);
        let png_grey = png(&grey, w, h, image::ColorType::L8);
        for ch in [Channels::Rgb, Channels::Bgr, Channels::Mono] {
            let mut im = input(32, 24, ch);
            im.resize = Resize::Area;
            let raw = run(&im, &view(w, h, "rgb8", w * 3, &rgb)).unwrap();
            let mut p = ImagePipeline::new(&im);
            let mut out = vec![0.0; im.tensor_len()];
            for format in ["jpeg", "rgb8; jpeg compressed bgr8", ""] {
                p.process_compressed(&compressed(format, &jpg), &mut out).unwrap();
                let worst = out.iter().zip(&raw).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst < 4.0, "JPEG ({format:?}) -> {ch:?} is off by up to {worst} levels");
            }
            for format in ["png", "rgb8; png compressed rgb8", "image/png"] {
                p.process_compressed(&compressed(format, &png_rgb), &mut out).unwrap();
                assert_close(&out, &raw, 1e-4, &format!("PNG ({format:?}) -> {ch:?}"));
            }
            let raw_grey = run(&im, &view(w, h, "mono8", w, &grey)).unwrap();
            p.process_compressed(&compressed("png", &png_grey), &mut out).unwrap();
            assert_close(&out, &raw_grey, 1e-4, &format!("grey PNG -> {ch:?}"));
            assert_eq!(p.source_size(), Some((w, h)));
        }
    }

    #[test]
    fn a_16_bit_png_gives_depth_also_through_compressed_depth() {
        let (w, h) = (6u32, 4u32);
        let mm: Vec<u16> = (0..w * h).map(|i| (i * 997 % 5000) as u16).collect();
        let native: Vec<u8> = mm.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let file = png(&native, w, h, image::ColorType::L16);
        let im = input(3, 2, Channels::Depth);
        let le: Vec<u8> = mm.iter().flat_map(|v| v.to_le_bytes()).collect();
        let raw = run(&im, &view(w, h, "16UC1", 2 * w, &le)).unwrap();
        let mut p = ImagePipeline::new(&im);
        let mut out = vec![0.0; im.tensor_len()];
        p.process_compressed(&compressed("16UC1; png compressed mono16", &file), &mut out).unwrap();
        assert_eq!(out, raw);
        let mut depth = vec![0u8; DEPTH_HEADER];
        depth.extend_from_slice(&file);
        out.fill(0.0);
        p.process_compressed(&compressed("16UC1; compressedDepth png", &depth), &mut out).unwrap();
        assert_eq!(out, raw);
        let e = p.process_compressed(&compressed("32FC1; compressedDepth", &depth[3..]), &mut out).unwrap_err();
        assert_eq!(e.kind(), 1, "{e}");
        // An 8-bit PNG is brightness, not depth.
        let e = p.process_compressed(&compressed("png", &png(&[9; 24], w, h, image::ColorType::L8)), &mut out);
        assert_eq!(e.unwrap_err().kind(), 1);
    }

    #[test]
    fn cdr_bytes_give_what_the_views_give() {
        let (w, h) = (8u32, 6u32);
        let rgb = smooth(w as usize, h as usize);
        let msg = Image {
            header: Header { frame_id: "camera_optical".into(), ..Default::default() },
            height: h,
            width: w,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: w * 3,
            data: rgb.clone(),
        };
        let bytes = cdr::encode(&msg).unwrap();
        let im = input(4, 3, Channels::Rgb);
        let mut p = ImagePipeline::new(&im);
        let mut out = vec![0.0; im.tensor_len()];
        p.process_cdr(&bytes, &mut out).unwrap();
        let v: ImageView = cdr::decode_borrowed(&bytes, Image::TYPE).unwrap();
        assert_eq!(out, run(&im, &v).unwrap());

        let mut cim = im.clone();
        cim.msg_type = "sensor_msgs/CompressedImage".into();
        let cmsg = CompressedImage {
            header: Header::default(),
            format: "png".into(),
            data: png(&rgb, w, h, image::ColorType::Rgb8),
        };
        let mut cp = ImagePipeline::new(&cim);
        let mut cout = vec![0.0; im.tensor_len()];
        cp.process_cdr(&cdr::encode(&cmsg).unwrap(), &mut cout).unwrap();
        assert_eq!(cout, out);
        // A raw image on the compressed topic is not its type.
        assert_eq!(cp.process_cdr(&[0, 1, 0, 0, 1, 2], &mut cout).unwrap_err().kind(), 0);
    }

    #[test]
    fn every_bad_image_gives_its_kind_and_the_next_good_one_still_works() {
        let (w, h) = (16u32, 12u32);
        let rgb = smooth(w as usize, h as usize);
        let mut im = input(8, 6, Channels::Rgb);
        im.encodings = vec!["rgb8".into(), "jpeg".into()];
        im.max_pixels = 100_000;
        let mut p = ImagePipeline::new(&im);
        let mut good = vec![0.0; im.tensor_len()];
        p.process_image(&view(w, h, "rgb8", w * 3, &rgb), &mut good).unwrap();
        assert_eq!(p.source_size(), Some((w, h)));

        let bgr = view(w, h, "bgr8", w * 3, &rgb);
        let jpg = jpeg(&rgb, w, h, image::ColorType::Rgb8);
        let mut big_jpg = jpeg(&smooth(32, 24), 32, 24, image::ColorType::Rgb8);
        // Patch the frame header (SOF0: marker, length, precision, height, width) to 10000x10000.
        let sof = big_jpg.windows(2).position(|m| m == [0xff, 0xc0]).unwrap();
        big_jpg[sof + 5..sof + 9].copy_from_slice(&[0x27, 0x10, 0x27, 0x10]);
        let other_size = jpeg(&smooth(8, 8), 8, 8, image::ColorType::Rgb8);
        type Bad<'a> = (&'a str, Box<dyn Fn(&mut ImagePipeline, &mut [f32]) -> Result<(), ImageError> + 'a>);
        let bad: Vec<Bad> = vec![
            ("decode", Box::new(|p, o| p.process_cdr(&[0, 1, 0, 0, 7], o))),
            ("decode", Box::new(|p, o| p.process_cdr(&[9, 9, 0, 0, 7, 0, 0, 0], o))),
            ("encoding", Box::new(|p, o| p.process_image(&bgr, o))),
            ("encoding", Box::new(|p, o| p.process_image(&view(w, h, "yuv422", w * 2, &rgb), o))),
            ("encoding", Box::new(|p, o| p.process_image(&view(w, h, "jpeg", w * 3, &rgb), o))),
            ("encoding", Box::new(|p, o| p.process_compressed(&compressed("tiff", &[1, 2, 3]), o))),
            ("size", Box::new(|p, o| p.process_image(&view(0, 0, "rgb8", 0, &[]), o))),
            ("size", Box::new(|p, o| p.process_image(&view(w, h, "rgb8", w * 3 - 1, &rgb), o))),
            ("size", Box::new(|p, o| p.process_image(&view(w, h, "rgb8", w * 3, &rgb[..rgb.len() - 1]), o))),
            ("size", Box::new(|p, o| p.process_image(&view(w, h, "rgb8", u32::MAX, &rgb), o))),
            ("too_big", Box::new(|p, o| p.process_image(&view(10_000, 10_000, "rgb8", 30_000, &rgb), o))),
            ("too_big", Box::new(|p, o| p.process_image(&view(u32::MAX, u32::MAX, "rgb8", u32::MAX, &[]), o))),
            ("too_big", Box::new(|p, o| p.process_compressed(&compressed("jpeg", &big_jpg), o))),
            ("resolution_changed", Box::new(|p, o| p.process_image(&view(8, 24, "rgb8", 24, &rgb), o))),
            ("resolution_changed", Box::new(|p, o| p.process_compressed(&compressed("jpeg", &other_size), o))),
            ("corrupt", Box::new(|p, o| p.process_compressed(&compressed("jpeg", &jpg[..jpg.len() / 2]), o))),
            ("corrupt", Box::new(|p, o| p.process_compressed(&compressed("jpeg", &jpg[..40]), o))),
            ("corrupt", Box::new(|p, o| p.process_compressed(&compressed("jpeg", b"not a jpeg at all"), o))),
        ];
        let mut out = vec![0.0; im.tensor_len()];
        for (i, (kind, f)) in bad.iter().enumerate() {
            out.fill(-7.0);
            let e = f(&mut p, &mut out).expect_err(&format!("bad image {i} ({kind}) was accepted"));
            assert_eq!(IMAGE_KINDS[e.kind()], *kind, "bad image {i}: {e}");
            assert!(out.iter().all(|&v| v == -7.0), "bad image {i} ({kind}) wrote the tensor");
            assert_eq!(p.source_size(), Some((w, h)), "bad image {i} ({kind}) moved the lock");
            p.process_image(&view(w, h, "rgb8", w * 3, &rgb), &mut out).unwrap();
            assert_eq!(out, good, "after bad image {i} ({kind})");
        }
        // The messages name the problem and the way out.
        let e = p.process_image(&view(8, 24, "rgb8", 24, &rgb), &mut out).unwrap_err().to_string();
        assert!(e.contains("16x12 to 8x24") && e.contains("restart"), "{e}");
        let e = p.process_image(&bgr, &mut out).unwrap_err().to_string();
        assert!(e.contains("bgr8") && e.contains("rgb8, jpeg") && e.contains("encodings"), "{e}");
        let e = p.process_image(&view(10_000, 10_000, "rgb8", 30_000, &rgb), &mut out).unwrap_err().to_string();
        assert!(e.contains("max_pixels (100000)"), "{e}");
    }

    #[test]
    fn a_png_that_is_cut_short_is_corrupt() {
        let rgb = smooth(16, 12);
        let file = png(&rgb, 16, 12, image::ColorType::Rgb8);
        let im = input(8, 6, Channels::Rgb);
        let mut p = ImagePipeline::new(&im);
        let mut out = vec![0.0; im.tensor_len()];
        for cut in [file.len() / 2, file.len() - 13, 20] {
            let e = p.process_compressed(&compressed("png", &file[..cut]), &mut out).unwrap_err();
            assert_eq!(e.kind(), 5, "cut at {cut}: {e}");
        }
        assert_eq!(p.source_size(), None);
        p.process_compressed(&compressed("png", &file), &mut out).unwrap();
        assert_eq!(p.source_size(), Some((16, 12)));
    }

    /// Per-frame decode and preprocessing, release build:
    /// `cargo test --release --lib observe::image::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let frames = 200;
        let rgb96 = pattern(96, 96, 3);
        let rgb640 = smooth(640, 480);
        let jpg640 = jpeg(&rgb640, 640, 480, image::ColorType::Rgb8);
        type Case = (&'static str, (u32, u32), usize, Resize, bool);
        let cases: [Case; 5] = [
            ("96x96 rgb8 -> 64x64 bilinear", (96, 96), 64, Resize::Bilinear, false),
            ("96x96 rgb8 -> 96x96 bilinear", (96, 96), 96, Resize::Bilinear, false),
            ("640x480 rgb8 -> 96x96 bilinear", (640, 480), 96, Resize::Bilinear, false),
            ("640x480 rgb8 -> 96x96 area", (640, 480), 96, Resize::Area, false),
            ("640x480 JPEG q95 -> 96x96 bilinear", (640, 480), 96, Resize::Bilinear, true),
        ];
        println!("| case | median µs/frame | p90 µs/frame |");
        println!("|---|---:|---:|");
        for (name, (w, h), side, resize, jpeg_in) in cases {
            let mut im = input(side, side, Channels::Rgb);
            im.resize = resize;
            im.scale = 1.0 / 255.0;
            let mut p = ImagePipeline::new(&im);
            let mut out = vec![0.0; im.tensor_len()];
            let data = if w == 96 { &rgb96 } else { &rgb640 };
            let mut times = vec![];
            for _ in 0..frames {
                let t = std::time::Instant::now();
                if jpeg_in {
                    p.process_compressed(&compressed("jpeg", &jpg640), &mut out).unwrap();
                } else {
                    p.process_image(&view(w, h, "rgb8", w * 3, data), &mut out).unwrap();
                }
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(f64::total_cmp);
            println!("| {name} | {:.1} | {:.1} |", times[frames / 2], times[frames * 9 / 10]);
        }
    }
}
