//! A raw LZMA1 decoder sized for a microcontroller: it allocates nothing. The caller gives it the
//! probability table, sized from the stream's `lc`/`lp` ([`probs_len`]), and the dictionary
//! (the header's window), and pulls the delta's payload through a byte source as it needs it.
//!
//! With the MCU profile (`lc = lp = pb = 0`, 4 KiB dictionary) that is 2,615 probabilities
//! (5,230 bytes) and 4,096 bytes of dictionary, plus this struct: the decoder a device needs to
//! apply an otadelta within 16 KiB. liblzma, by contrast, sizes its literal tables for the
//! largest `lc + lp` it supports. The algorithm is the one in the LZMA specification of the
//! LZMA SDK (range coder, literal/match/rep state machine, end marker). The host's
//! `otaforge::delta::apply` keeps using liblzma, which is faster.
//!
//! A decoder made by [`LzmaDecoder::primed`] decodes a stream whose window starts out holding
//! `base` bytes that precede its output (liblzma's preset dictionary: method 2 primes with
//! old). Its own buffer then only holds the last bytes it produced; a match reaching further
//! back reads through a [`Far`] window: old and the new bytes already written, both in
//! flash on a device, so the window can be as large as both images for no RAM.

use crate::error::{IoError, LzmaError};

const BIT_MODEL_TOTAL: u16 = 1 << 11;
const MOVE_BITS: u32 = 5;
const STATES: usize = 12;
const POS_STATES_MAX: usize = 16;
const LEN_PROBS: usize = 2 + 2 * POS_STATES_MAX * 8 + 256;

// Offsets of each model in the probability table (the literal coders come last).
const IS_MATCH: usize = 0;
const IS_REP: usize = IS_MATCH + STATES * POS_STATES_MAX;
const IS_REP_G0: usize = IS_REP + STATES;
const IS_REP_G1: usize = IS_REP_G0 + STATES;
const IS_REP_G2: usize = IS_REP_G1 + STATES;
const IS_REP0_LONG: usize = IS_REP_G2 + STATES;
const POS_SLOT: usize = IS_REP0_LONG + STATES * POS_STATES_MAX;
const POS_SPECIAL: usize = POS_SLOT + 4 * 64;
const ALIGN: usize = POS_SPECIAL + 115;
const LEN: usize = ALIGN + 16;
const REP_LEN: usize = LEN + LEN_PROBS;
const LITERAL: usize = REP_LEN + LEN_PROBS;

/// How many 16-bit probabilities a stream with properties byte `props` needs (1,847 fixed
/// plus 0x300 per literal coder).
pub fn probs_len(props: u8) -> Option<usize> {
    let (lc, lp) = (u32::from(props % 9), u32::from(props / 9 % 5));
    (props < 9 * 5 * 5).then(|| LITERAL + (0x300 << (lc + lp)))
}

/// Where a primed decoder reads bytes further back than its own buffer: position `pos` of
/// the virtual stream made of the `base` bytes before the output, then the output. Only
/// positions before the bytes its tail holds are asked for: ones the caller has been handed
/// by an earlier [`LzmaDecoder::read_far`] (and, on a device, written). [`LzmaDecoder::read`]
/// has none: a primed decoder read that way fails when a match reaches before its tail.
pub trait Far {
    /// Reads `buf.len()` bytes at `pos`.
    fn read_far(&mut self, pos: u64, buf: &mut [u8]) -> Result<(), IoError>;
}

/// The window of a decoder that is not primed: nothing lies before its buffer.
struct NoFar;

impl Far for NoFar {
    fn read_far(&mut self, _: u64, _: &mut [u8]) -> Result<(), IoError> {
        Err(IoError { code: 0 })
    }
}

/// Bytes read ahead through the [`Far`] window: matches copy forwards, so one read serves many.
const FAR_CACHE: usize = 16;

/// The decoder. Its memory is the two buffers it borrows and about 100 bytes of its own.
pub struct LzmaDecoder<'m> {
    probs: &'m mut [u16],
    dict: &'m mut [u8],
    /// Bytes before the output that the window holds from the start (primed), and how far
    /// back a match may reach (the header's window).
    base: u64,
    window: u64,
    cache: [u8; FAR_CACHE],
    cache_at: u64,
    cache_len: usize,
    lc: u32,
    lp_mask: u64,
    pb_mask: u64,
    /// Next write position in `dict`, and whether it has wrapped.
    pos: usize,
    full: bool,
    total: u64,
    range: u32,
    code: u32,
    started: bool,
    ended: bool,
    state: usize,
    rep: [u32; 4],
    /// Bytes of the current match still to copy.
    pending: u32,
}

impl core::fmt::Debug for LzmaDecoder<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LzmaDecoder").field("total", &self.total).finish_non_exhaustive()
    }
}

/// Where the decoder pulls compressed bytes from, one at a time.
pub type Source<'s> = dyn FnMut() -> Result<u8, IoError> + 's;

impl<'m> LzmaDecoder<'m> {
    /// A decoder for properties byte `props`. `probs` must hold exactly [`probs_len`]`(props)`
    /// entries and `dict` the dictionary size (at least 4096 bytes).
    pub fn new(props: u8, dict: &'m mut [u8], probs: &'m mut [u16]) -> Result<Self, LzmaError> {
        if dict.len() < 4096 {
            return Err(LzmaError::Setup("the dictionary is smaller than 4096 bytes"));
        }
        Self::build(props, dict, probs)
    }

    fn build(props: u8, dict: &'m mut [u8], probs: &'m mut [u16]) -> Result<Self, LzmaError> {
        let n = probs_len(props).ok_or(LzmaError::Setup("properties byte out of range"))?;
        if probs.len() != n {
            return Err(LzmaError::Setup("the probability table does not fit lc and lp"));
        }
        probs.fill(BIT_MODEL_TOTAL / 2);
        let p = u32::from(props);
        let window = dict.len() as u64;
        Ok(Self {
            probs,
            dict,
            base: 0,
            window,
            cache: [0; FAR_CACHE],
            cache_at: 0,
            cache_len: 0,
            lc: p % 9,
            lp_mask: (1 << (p / 9 % 5)) - 1,
            pb_mask: (1 << (p / 45)) - 1,
            pos: 0,
            full: false,
            total: 0,
            range: u32::MAX,
            code: 0,
            started: false,
            ended: false,
            state: 0,
            rep: [0; 4],
            pending: 0,
        })
    }

    /// A decoder whose window starts holding `base` bytes before its output (read through
    /// the [`Far`] given to [`Self::read_far`]) and reaches `window` bytes back; `tail` keeps
    /// the last bytes produced (at least 16), and each `read_far` call returns at most that
    /// many.
    pub fn primed(
        props: u8,
        tail: &'m mut [u8],
        probs: &'m mut [u16],
        (base, window): (u64, u64),
    ) -> Result<Self, LzmaError> {
        if tail.len() < 16 {
            return Err(LzmaError::Setup("the tail buffer is smaller than 16 bytes"));
        }
        let mut d = Self::build(props, tail, probs)?;
        d.base = base;
        d.window = window;
        Ok(d)
    }

    /// Bytes decoded so far.
    pub fn total_out(&self) -> u64 {
        self.total
    }

    /// Starts again, for the same stream from its first byte (after a power cut the device
    /// decompresses the payload again: the decoder keeps no state worth saving).
    pub fn reset(&mut self) {
        self.probs.fill(BIT_MODEL_TOTAL / 2);
        self.pos = 0;
        self.full = false;
        self.total = 0;
        self.range = u32::MAX;
        self.code = 0;
        self.started = false;
        self.ended = false;
        self.state = 0;
        self.rep = [0; 4];
        self.pending = 0;
        self.cache_len = 0;
    }

    /// Decodes up to `out.len()` bytes, pulling input from `src`; returns how many. Zero means
    /// the stream's end marker has been read (with a clean range coder).
    pub fn read(&mut self, src: &mut Source<'_>, out: &mut [u8]) -> Result<usize, LzmaError> {
        self.read_far(src, &mut NoFar, out)
    }

    /// [`Self::read`] for a primed decoder, reading what lies before its tail through `far`.
    /// It returns at most the tail's length: the caller must have what it was handed readable
    /// through `far` by the next call.
    pub fn read_far(
        &mut self,
        src: &mut Source<'_>,
        far: &mut dyn Far,
        out: &mut [u8],
    ) -> Result<usize, LzmaError> {
        let out = if self.window > self.dict.len() as u64 {
            let n = out.len().min(self.dict.len());
            &mut out[..n]
        } else {
            out
        };
        if !self.started {
            let first = next(src)?;
            for _ in 0..4 {
                self.code = self.code << 8 | u32::from(next(src)?);
            }
            if first != 0 || self.code == self.range {
                return Err(LzmaError::Corrupt("bad range coder start"));
            }
            self.started = true;
        }
        let mut n = 0;
        while n < out.len() && !self.ended {
            if self.pending > 0 {
                let b = self.back(far, self.rep[0])?;
                out[n] = self.put(b);
                n += 1;
                self.pending -= 1;
                continue;
            }
            self.symbol(src, far, &mut out[n], &mut n)?;
        }
        Ok(n)
    }

    /// Decodes one literal, short rep or match header; a literal or short rep lands in `slot`.
    fn symbol(
        &mut self,
        src: &mut Source<'_>,
        far: &mut dyn Far,
        slot: &mut u8,
        n: &mut usize,
    ) -> Result<(), LzmaError> {
        let pos_state = ((self.base + self.total) & self.pb_mask) as usize;
        let s = self.state;
        if self.bit(src, IS_MATCH + s * POS_STATES_MAX + pos_state)? == 0 {
            let b = self.literal(src, far)?;
            *slot = self.put(b);
            *n += 1;
            self.state = if s < 4 {
                0
            } else if s < 10 {
                s - 3
            } else {
                s - 6
            };
            return Ok(());
        }
        let len;
        if self.bit(src, IS_REP + s)? != 0 {
            if self.base + self.total == 0 {
                return Err(LzmaError::Corrupt("a repeated match before any byte"));
            }
            if self.bit(src, IS_REP_G0 + s)? == 0 {
                if self.bit(src, IS_REP0_LONG + s * POS_STATES_MAX + pos_state)? == 0 {
                    self.state = if s < 7 { 9 } else { 11 };
                    let b = self.back(far, self.rep[0])?;
                    *slot = self.put(b);
                    *n += 1;
                    return Ok(());
                }
            } else {
                let dist = if self.bit(src, IS_REP_G1 + s)? == 0 {
                    self.rep[1]
                } else {
                    let d = if self.bit(src, IS_REP_G2 + s)? == 0 {
                        self.rep[2]
                    } else {
                        let d = self.rep[3];
                        self.rep[3] = self.rep[2];
                        d
                    };
                    self.rep[2] = self.rep[1];
                    d
                };
                self.rep[1] = self.rep[0];
                self.rep[0] = dist;
            }
            len = self.length(src, REP_LEN, pos_state)?;
            self.state = if s < 7 { 8 } else { 11 };
        } else {
            self.rep[3] = self.rep[2];
            self.rep[2] = self.rep[1];
            self.rep[1] = self.rep[0];
            len = self.length(src, LEN, pos_state)?;
            self.state = if s < 7 { 7 } else { 10 };
            let dist = self.distance(src, len)?;
            if dist == u32::MAX {
                if self.code != 0 {
                    return Err(LzmaError::Corrupt(
                        "the end marker leaves data in the range coder",
                    ));
                }
                self.ended = true;
                return Ok(());
            }
            self.rep[0] = dist;
        }
        let d = u64::from(self.rep[0]);
        if d >= self.window || d >= self.base + self.total {
            return Err(LzmaError::Corrupt("a match reaches before the start or the dictionary"));
        }
        self.pending = len + 2;
        Ok(())
    }

    fn literal(&mut self, src: &mut Source<'_>, far: &mut dyn Far) -> Result<u8, LzmaError> {
        let at = self.base + self.total;
        let prev = if at > 0 { self.back(far, 0)? } else { 0 };
        let lit_state =
            (((at & self.lp_mask) as usize) << self.lc) + (usize::from(prev) >> (8 - self.lc));
        let base = LITERAL + 0x300 * lit_state;
        let mut symbol = 1usize;
        if self.state >= 7 {
            let mut match_byte = usize::from(self.back(far, self.rep[0])?);
            while symbol < 0x100 {
                let match_bit = (match_byte >> 7) & 1;
                match_byte <<= 1;
                let bit = self.bit(src, base + ((1 + match_bit) << 8) + symbol)?;
                symbol = symbol << 1 | bit;
                if match_bit != bit {
                    break;
                }
            }
        }
        while symbol < 0x100 {
            symbol = symbol << 1 | self.bit(src, base + symbol)?;
        }
        Ok((symbol - 0x100) as u8)
    }

    fn length(
        &mut self,
        src: &mut Source<'_>,
        at: usize,
        pos_state: usize,
    ) -> Result<u32, LzmaError> {
        Ok(if self.bit(src, at)? == 0 {
            self.tree(src, at + 2 + pos_state * 8, 3)?
        } else if self.bit(src, at + 1)? == 0 {
            8 + self.tree(src, at + 2 + POS_STATES_MAX * 8 + pos_state * 8, 3)?
        } else {
            16 + self.tree(src, at + 2 + 2 * POS_STATES_MAX * 8, 8)?
        })
    }

    fn distance(&mut self, src: &mut Source<'_>, len: u32) -> Result<u32, LzmaError> {
        let len_state = len.min(3) as usize;
        let slot = self.tree(src, POS_SLOT + len_state * 64, 6)?;
        if slot < 4 {
            return Ok(slot);
        }
        let direct = (slot >> 1) - 1;
        let mut dist = (2 | (slot & 1)) << direct;
        if slot < 14 {
            dist += self.reverse(src, POS_SPECIAL + dist as usize - slot as usize, direct)?;
        } else {
            dist += self.direct(src, direct - 4)? << 4;
            dist += self.reverse(src, ALIGN, 4)?;
        }
        Ok(dist)
    }

    /// The byte `dist + 1` back from the write position (`dist` is checked to lie in the
    /// window): from the buffer, or through `far` for what lies before it.
    fn back(&mut self, far: &mut dyn Far, dist: u32) -> Result<u8, LzmaError> {
        let d = u64::from(dist) + 1;
        let held = self.total.min(self.dict.len() as u64);
        if d <= held {
            let d = d as usize;
            let i = if d <= self.pos { self.pos - d } else { self.dict.len() + self.pos - d };
            return Ok(self.dict[i]);
        }
        let at = self.base + self.total - d;
        if at < self.cache_at || at >= self.cache_at + self.cache_len as u64 {
            // Read ahead, but not into what the buffer holds: the caller may not have
            // written it yet.
            let limit = self.base + self.total - held;
            let n = (limit - at).min(FAR_CACHE as u64) as usize;
            far.read_far(at, &mut self.cache[..n]).map_err(LzmaError::Window)?;
            self.cache_at = at;
            self.cache_len = n;
        }
        Ok(self.cache[(at - self.cache_at) as usize])
    }

    fn put(&mut self, b: u8) -> u8 {
        self.dict[self.pos] = b;
        self.pos += 1;
        if self.pos == self.dict.len() {
            self.pos = 0;
            self.full = true;
        }
        self.total += 1;
        b
    }

    fn normalize(&mut self, src: &mut Source<'_>) -> Result<(), LzmaError> {
        if self.range < 1 << 24 {
            self.range <<= 8;
            self.code = self.code << 8 | u32::from(next(src)?);
        }
        Ok(())
    }

    fn bit(&mut self, src: &mut Source<'_>, at: usize) -> Result<usize, LzmaError> {
        let p = self.probs[at];
        let bound = (self.range >> 11) * u32::from(p);
        let bit = if self.code < bound {
            self.probs[at] = p + ((BIT_MODEL_TOTAL - p) >> MOVE_BITS);
            self.range = bound;
            0
        } else {
            self.probs[at] = p - (p >> MOVE_BITS);
            self.code -= bound;
            self.range -= bound;
            1
        };
        self.normalize(src)?;
        Ok(bit)
    }

    fn tree(&mut self, src: &mut Source<'_>, at: usize, bits: u32) -> Result<u32, LzmaError> {
        let mut m = 1usize;
        for _ in 0..bits {
            m = m << 1 | self.bit(src, at + m)?;
        }
        Ok((m - (1 << bits)) as u32)
    }

    fn reverse(&mut self, src: &mut Source<'_>, at: usize, bits: u32) -> Result<u32, LzmaError> {
        let (mut m, mut sym) = (1usize, 0u32);
        for i in 0..bits {
            let b = self.bit(src, at + m)?;
            m = m << 1 | b;
            sym |= (b as u32) << i;
        }
        Ok(sym)
    }

    fn direct(&mut self, src: &mut Source<'_>, bits: u32) -> Result<u32, LzmaError> {
        let mut res = 0u32;
        for _ in 0..bits {
            self.range >>= 1;
            let bit = u32::from(self.code >= self.range);
            if bit == 1 {
                self.code -= self.range;
            }
            if self.code == self.range {
                return Err(LzmaError::Corrupt("bad direct bits"));
            }
            self.normalize(src)?;
            res = res << 1 | bit;
        }
        Ok(res)
    }
}

fn next(src: &mut Source<'_>) -> Result<u8, LzmaError> {
    src().map_err(LzmaError::Source)
}
