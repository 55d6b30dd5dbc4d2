//! Writing the numbers of the op stream and the displacement table (LEB128, zigzag); the
//! device-side readers are `otaforge_applier::wire`. Here so that the writers of the op
//! stream ([`super::ops`]), its parts ([`super::split`]), the table ([`super::exec`]) and
//! BSDIFF40's translation share them without importing each other.

pub(crate) use otaforge_applier::wire::zigzag;

/// Appends `v` as LEB128 (at most 10 bytes).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use otaforge_applier::wire::Varint;

    #[test]
    fn varints_round_trip_through_the_device_reader() {
        for v in [0u64, 1, 127, 128, 1 << 40, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut r = Varint::default();
            let got: Vec<_> = b.iter().map(|&x| r.push(x).unwrap()).collect();
            assert_eq!(got.last(), Some(&Some(v)));
        }
        let mut b = Vec::new();
        put_varint(&mut b, u64::MAX);
        assert_eq!(b.len(), 10);
    }
}
