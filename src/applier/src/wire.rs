//! The numbers of the op stream and the displacement table: LEB128 (at most 10 bytes, fitting
//! 64 bits) and zigzag for signed values (docs/delta-format.md, "Method 1").

/// Maps a signed value to an unsigned one: 0, -1, 1, -2, … to 0, 1, 2, 3, ….
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A LEB128 number read a byte at a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Varint {
    /// The bits read so far.
    pub value: u64,
    /// How many bits they are (a multiple of 7, at most 63).
    pub shift: u32,
}

/// A LEB128 number longer than 10 bytes or past 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlong;

impl Varint {
    /// Takes the next byte: `Some(value)` when it was the number's last.
    pub fn push(&mut self, b: u8) -> Result<Option<u64>, Overlong> {
        if self.shift == 63 && b > 1 || self.shift > 63 {
            return Err(Overlong);
        }
        self.value |= u64::from(b & 0x7f) << self.shift;
        self.shift += 7;
        if b & 0x80 != 0 {
            return Ok(None);
        }
        let v = self.value;
        *self = Self::default();
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips_and_overlong_numbers_are_refused() {
        for v in [0i64, 1, -1, 63, -64, 1 << 40, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut n = Varint::default();
        for _ in 0..9 {
            assert_eq!(n.push(0xff), Ok(None));
        }
        assert_eq!(n.push(1), Ok(Some(u64::MAX)));
        let mut n = Varint::default();
        for _ in 0..9 {
            n.push(0x80).unwrap();
        }
        assert_eq!(n.push(2), Err(Overlong));
    }
}
