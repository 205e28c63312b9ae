//! Reading a pickle program's operands, every read bounded by its end.

pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    pub(super) fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.array()?))
    }

    /// BINFLOAT's operand: big-endian.
    pub(super) fn f64_be(&mut self) -> Option<f64> {
        Some(f64::from_be_bytes(self.array()?))
    }

    /// LONG1's operand: `n` bytes, little-endian two's complement (up to 8).
    pub(super) fn long(&mut self, n: usize) -> Option<i64> {
        if n > 8 {
            return None;
        }
        let bytes = self.take(n)?;
        let mut value: i64 = 0;
        for (i, &b) in bytes.iter().enumerate() {
            value |= (b as i64) << (8 * i);
        }
        if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
            value -= 1i64 << (8 * n);
        }
        Some(value)
    }

    /// GLOBAL's operands: a line up to `\n`.
    pub(super) fn line(&mut self) -> Option<String> {
        let rest = self.bytes.get(self.at..)?;
        let end = rest.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Some(line)
    }
}
