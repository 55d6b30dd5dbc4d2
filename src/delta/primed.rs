//! Raw LZMA1 with a preset dictionary: the coder's window starts out holding a prefix, as if
//! those bytes had just been coded, so data that repeats them costs only a match. Method 3
//! primes its literals with old this way (docs/delta-format.md, "Method 3"). liblzma has it
//! (`preset_dict`), the safe `liblzma` crate does not expose it: this module reaches it
//! through `liblzma-sys`, the library that crate links, and keeps the `unsafe` here.
#![allow(unsafe_code)]

use std::io::{self, Read};

use liblzma_sys as sys;

use super::codec::LzmaParams;

/// An initialised liblzma stream, ended when dropped.
struct Stream(sys::lzma_stream);

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by `lzma_raw_encoder`/`lzma_raw_decoder`
        // (`open`), and is ended once.
        unsafe { sys::lzma_end(&mut self.0) }
    }
}

/// The outcome of one `lzma_code` call: input bytes used, output bytes written, whether the
/// stream ended.
struct Step {
    used: usize,
    wrote: usize,
    end: bool,
}

fn error(ret: sys::lzma_ret) -> io::Error {
    let kind = if ret == sys::LZMA_DATA_ERROR || ret == sys::LZMA_FORMAT_ERROR {
        io::ErrorKind::InvalidData
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, format!("liblzma error {ret}"))
}

impl Stream {
    /// A raw LZMA1 encoder or decoder for `params`, at `preset` (encoder), whose window starts
    /// with `prefix` (its last `params.dict` bytes).
    fn open(params: LzmaParams, preset: u32, prefix: &[u8], encoder: bool) -> io::Result<Self> {
        // SAFETY: the options are plain integers and pointers, for which all zeros is a valid
        // value; `lzma_lzma_preset` then fills them in.
        let mut o: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
        // SAFETY: `o` is a valid, writable options struct.
        if unsafe { sys::lzma_lzma_preset(&mut o, preset) } != 0 {
            return Err(io::Error::other(format!("LZMA preset {preset} refused")));
        }
        o.dict_size = params.dict;
        o.lc = params.lc;
        o.lp = params.lp;
        o.pb = params.pb;
        o.preset_dict = prefix.as_ptr();
        o.preset_dict_size = u32::try_from(prefix.len())
            .map_err(|_| io::Error::other("an LZMA preset dictionary over 4 GiB"))?;
        let filters = [
            sys::lzma_filter {
                id: sys::LZMA_FILTER_LZMA1,
                options: (&mut o as *mut sys::lzma_options_lzma).cast(),
            },
            sys::lzma_filter { id: sys::LZMA_VLI_UNKNOWN, options: std::ptr::null_mut() },
        ];
        // SAFETY: all zeros is `LZMA_STREAM_INIT`, the documented initial value.
        let mut s = Stream(unsafe { std::mem::zeroed() });
        // SAFETY: `filters`, the options it points to and `prefix` outlive the call, and
        // liblzma copies what it keeps (options and preset dictionary) while initialising.
        let ret = unsafe {
            if encoder {
                sys::lzma_raw_encoder(&mut s.0, filters.as_ptr())
            } else {
                sys::lzma_raw_decoder(&mut s.0, filters.as_ptr())
            }
        };
        if ret != sys::LZMA_OK {
            // Not initialised: nothing to end.
            std::mem::forget(s);
            return Err(error(ret));
        }
        Ok(s)
    }

    /// One `lzma_code` call from `input` into `out`.
    fn code(&mut self, input: &[u8], out: &mut [u8], finish: bool) -> io::Result<Step> {
        self.0.next_in = input.as_ptr();
        self.0.avail_in = input.len();
        self.0.next_out = out.as_mut_ptr();
        self.0.avail_out = out.len();
        let action = if finish { sys::LZMA_FINISH } else { sys::LZMA_RUN };
        // SAFETY: the stream is initialised; `next_in`/`avail_in` and `next_out`/`avail_out`
        // describe live buffers for the duration of the call, and are not kept after it (the
        // next call sets them again).
        let ret = unsafe { sys::lzma_code(&mut self.0, action) };
        let step = Step {
            used: input.len() - self.0.avail_in,
            wrote: out.len() - self.0.avail_out,
            end: ret == sys::LZMA_STREAM_END,
        };
        self.0.next_in = std::ptr::null();
        self.0.next_out = std::ptr::null_mut();
        match ret {
            sys::LZMA_OK | sys::LZMA_STREAM_END => Ok(step),
            r => Err(error(r)),
        }
    }
}

/// `data` compressed as raw LZMA1 (with an end marker, as the other parts) by a coder whose
/// window starts with `prefix`.
pub(crate) fn compress(
    data: &[u8],
    prefix: &[u8],
    params: LzmaParams,
    preset: u32,
) -> io::Result<Vec<u8>> {
    let mut s = Stream::open(params, preset, prefix, true)?;
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0;
    loop {
        let step = s.code(&data[at..], &mut buf, true)?;
        at += step.used;
        out.extend_from_slice(&buf[..step.wrote]);
        if step.end {
            return Ok(out);
        }
    }
}

/// A reader of what [`compress`] made from `body` with the same `prefix` and `params`.
pub(crate) fn decoder<'a>(
    body: &'a [u8],
    prefix: &[u8],
    params: LzmaParams,
) -> io::Result<Decoder<'a>> {
    Ok(Decoder { s: Stream::open(params, 6, prefix, false)?, input: body, end: false })
}

/// See [`decoder`].
pub(crate) struct Decoder<'a> {
    s: Stream,
    input: &'a [u8],
    end: bool,
}

impl Read for Decoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.end || buf.is_empty() {
            return Ok(0);
        }
        loop {
            let step = self.s.code(self.input, buf, false)?;
            self.input = &self.input[step.used..];
            self.end = step.end;
            if step.wrote > 0 || step.end {
                return Ok(step.wrote);
            }
            if step.used == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the LZMA stream ends before its end marker",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the prefix holds costs a match; the decoder needs the same prefix, and a damaged
    /// or cut stream is an error.
    #[test]
    fn a_primed_stream_round_trips_and_costs_less() {
        let mut x = 5u32;
        let prefix: Vec<u8> = (0..50_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let data: Vec<u8> =
            prefix[10_000..30_000].iter().chain(&prefix[40_000..41_000]).copied().collect();
        let params = LzmaParams { dict: 1 << 17, lc: 4, lp: 0, pb: 1 };
        let primed = compress(&data, &prefix, params, 6).unwrap();
        let plain = compress(&data, &[], params, 6).unwrap();
        assert!(primed.len() * 20 < plain.len(), "{} vs {}", primed.len(), plain.len());
        let mut out = Vec::new();
        decoder(&primed, &prefix, params).unwrap().read_to_end(&mut out).unwrap();
        assert!(out == data);
        // Without the prefix the same bytes do not decode to the data.
        let mut wrong = Vec::new();
        let r = decoder(&primed, &[], params).unwrap().read_to_end(&mut wrong);
        assert!(r.is_err() || wrong != data);
        let cut = decoder(&primed[..primed.len() / 2], &prefix, params)
            .unwrap()
            .read_to_end(&mut Vec::new());
        assert!(cut.is_err());
    }

    /// The device's decoder (`otaforge_applier::lzma`), primed with the prefix it reads back
    /// through a window and keeping only a short tail, decodes what liblzma's encoder made:
    /// every `lc`/`lp`/`pb` a device is offered, tails of 16 and 256 bytes, and any read size.
    #[test]
    fn the_device_decoder_reads_a_primed_window_back() {
        use otaforge_applier::IoError;
        use otaforge_applier::lzma::{Far, LzmaDecoder, probs_len};

        struct Back<'a>(&'a [u8], &'a std::cell::RefCell<Vec<u8>>);
        impl Far for Back<'_> {
            fn read_far(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), IoError> {
                let out = self.1.borrow();
                for (i, b) in buf.iter_mut().enumerate() {
                    let at = pos as usize + i;
                    *b = if at < self.0.len() { self.0[at] } else { out[at - self.0.len()] };
                }
                Ok(())
            }
        }
        let mut x = 7u32;
        let mut next = move || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            x >> 16
        };
        let prefix: Vec<u8> = (0..40_000).map(|_| (next() % 40) as u8).collect();
        let mut data = Vec::new();
        while data.len() < 30_000 {
            let (at, len) = (next() as usize % 39_000, 1 + next() as usize % 900);
            data.extend_from_slice(&prefix[at..at + len]);
            data.extend((0..next() % 40).map(|_| next() as u8));
            if data.len() > 1000 && next() % 3 == 0 {
                let from = next() as usize % (data.len() - 500);
                data.extend_from_within(from..from + 400);
            }
        }
        let window = (prefix.len() + data.len()) as u32;
        for (lc, lp, pb) in [(0, 0, 0), (0, 1, 1), (1, 1, 1), (0, 2, 2), (3, 0, 2)] {
            let params = LzmaParams { dict: window, lc, lp, pb };
            let body = compress(&data, &prefix, params, 6).unwrap();
            for (tail, piece) in [(16, 1), (16, 7), (256, 128), (256, 4096)] {
                let mut probs = vec![0u16; probs_len(params.props()).unwrap()];
                let mut dict = vec![0u8; tail];
                let span = (prefix.len() as u64, u64::from(window));
                let mut dec =
                    LzmaDecoder::primed(params.props(), &mut dict, &mut probs, span).unwrap();
                let out = std::cell::RefCell::new(Vec::new());
                let mut input = body.iter().copied();
                let mut src = || input.next().ok_or(IoError { code: -1 });
                let mut buf = vec![0u8; piece];
                loop {
                    let n = dec.read_far(&mut src, &mut Back(&prefix, &out), &mut buf).unwrap();
                    assert!(n <= tail, "{n} bytes from a {tail}-byte tail");
                    if n == 0 {
                        break;
                    }
                    out.borrow_mut().extend_from_slice(&buf[..n]);
                }
                assert!(*out.borrow() == data, "lc {lc} lp {lp} pb {pb}, tail {tail}");
            }
        }
    }
}
