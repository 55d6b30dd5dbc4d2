//! Compressors for the payload: zstd (Linux gateways) and raw LZMA1 with a small dictionary
//! (microcontrollers), plus stored.

use std::io::{self, Read, Write};

use super::format::Compression;

/// LZMA settings: dictionary size and the literal/position context bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LzmaParams {
    /// Dictionary (decoder window) in bytes, at least 4096.
    pub dict: u32,
    /// Literal context bits.
    pub lc: u32,
    /// Literal position bits.
    pub lp: u32,
    /// Position bits.
    pub pb: u32,
}

impl LzmaParams {
    /// The properties byte LZMA decoders read.
    pub fn props(&self) -> u8 {
        ((self.pb * 5 + self.lp) * 9 + self.lc) as u8
    }

    /// Parses a properties byte.
    pub fn from_props(props: u8, dict: u32) -> Self {
        let p = u32::from(props);
        Self { dict, lc: p % 9, lp: p / 9 % 5, pb: p / 45 }
    }

    fn filters(&self, preset: u32) -> io::Result<liblzma::stream::Filters> {
        let mut opts =
            liblzma::stream::LzmaOptions::new_preset(preset).map_err(io::Error::other)?;
        opts.dict_size(self.dict)
            .literal_context_bits(self.lc)
            .literal_position_bits(self.lp)
            .position_bits(self.pb);
        let mut filters = liblzma::stream::Filters::new();
        filters.lzma1(&opts);
        Ok(filters)
    }
}

/// A payload encoder chosen by [`super::CreateOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    /// Stored.
    None,
    /// zstd at `level` with a window of `1 << window_log`.
    Zstd {
        /// zstd level (1..=22).
        level: i32,
        /// log2 of the window.
        window_log: u32,
    },
    /// Raw LZMA1 at `preset` (0..=9) with these parameters.
    Lzma {
        /// liblzma preset for the match finder and effort.
        preset: u32,
        /// Dictionary and context bits.
        params: LzmaParams,
    },
}

impl Encoder {
    /// The header's compression code.
    pub fn compression(&self) -> Compression {
        match self {
            Encoder::None => Compression::None,
            Encoder::Zstd { .. } => Compression::Zstd,
            Encoder::Lzma { .. } => Compression::Lzma,
        }
    }

    /// The header's window field.
    pub fn window(&self) -> u32 {
        match *self {
            Encoder::None => 0,
            Encoder::Zstd { window_log, .. } => 1u32 << window_log.min(31),
            Encoder::Lzma { params, .. } => params.dict,
        }
    }

    /// The header's LZMA properties byte.
    pub fn lzma_props(&self) -> u8 {
        match self {
            Encoder::Lzma { params, .. } => params.props(),
            _ => 0,
        }
    }

    /// Compresses whatever `produce` writes.
    pub fn compress(
        &self,
        produce: &mut dyn FnMut(&mut dyn Write) -> io::Result<u64>,
    ) -> io::Result<Vec<u8>> {
        match *self {
            Encoder::None => {
                let mut out = Vec::new();
                produce(&mut out)?;
                Ok(out)
            }
            Encoder::Zstd { level, window_log } => {
                let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level)?;
                enc.window_log(window_log)?;
                enc.long_distance_matching(window_log > 27)?;
                // The level's tables assume an input of unknown (large) size: ~80 MiB of match
                // tables at level 19 even for a 200 KB stream. Sized to the window, they hold
                // all the stream can use.
                if window_log < 24 {
                    use zstd::zstd_safe::CParameter;
                    enc.set_parameter(CParameter::HashLog(window_log + 1))?;
                    enc.set_parameter(CParameter::ChainLog(window_log + 1))?;
                }
                enc.include_checksum(false)?;
                enc.include_contentsize(false)?;
                produce(&mut enc)?;
                enc.finish()
            }
            Encoder::Lzma { preset, params } => {
                let stream = liblzma::stream::Stream::new_raw_encoder(&params.filters(preset)?)
                    .map_err(io::Error::other)?;
                let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
                produce(&mut enc)?;
                enc.finish()
            }
        }
    }
}

/// A reader of the decompressed payload.
pub fn decoder<'a>(
    compression: Compression,
    window: u32,
    lzma_props: u8,
    payload: &'a [u8],
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(payload),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(payload)?;
            d.window_log_max(window_log_for(window))?;
            Box::new(d)
        }
        Compression::Lzma => {
            let params = LzmaParams::from_props(lzma_props, window);
            let stream = liblzma::stream::Stream::new_raw_decoder(&params.filters(6)?)
                .map_err(io::Error::other)?;
            Box::new(liblzma::read::XzDecoder::new_stream(payload, stream))
        }
    })
}

/// The smallest `log` with `1 << log >= window`, at least 10 (zstd's minimum).
pub fn window_log_for(window: u32) -> u32 {
    (32 - window.saturating_sub(1).leading_zeros()).clamp(10, 31)
}

/// A zstd frame of `new` referencing `old` as its prefix (patch-from).
pub fn zstd_ref_compress(
    old: &[u8],
    new: &[u8],
    level: i32,
    window_log: u32,
) -> io::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, old)?;
    enc.window_log(window_log)?;
    enc.long_distance_matching(true)?;
    enc.include_checksum(false)?;
    enc.include_contentsize(false)?;
    enc.set_pledged_src_size(Some(new.len() as u64))?;
    enc.write_all(new)?;
    enc.finish()
}

/// Reader of new from a zstd patch-from frame.
pub fn zstd_ref_decoder<'a>(
    old: &'a [u8],
    window: u32,
    payload: &'a [u8],
) -> io::Result<impl Read + 'a> {
    let mut d = zstd::stream::read::Decoder::with_ref_prefix(payload, old)?;
    d.window_log_max(window_log_for(window))?;
    Ok(d)
}
