//! The VXLAN header (RFC 7348): 8 bytes before the inner Ethernet frame.
//!
//! ```text
//! 0               1               2               3
//! |R|R|R|R|I|R|R|R|           Reserved                            |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use super::WireError;

mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
    pub const PAYLOAD: usize = 8;
}

/// The "I" flag: the VNI is valid.
const FLAG_VNI: u8 = 0x08;

/// A read/write view of a VXLAN packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer, checking it holds a whole header with the I flag set.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Packet::new_unchecked(buffer);
        if p.buffer.as_ref().len() < field::PAYLOAD {
            return Err(WireError::Truncated);
        }
        if p.flags() & FLAG_VNI == 0 {
            return Err(WireError::Malformed);
        }
        Ok(p)
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24-bit VNI.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The inner frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI (its low 24 bits).
    pub fn set_vni(&mut self, vni: u32) {
        let b = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
    }
}

/// A parsed VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The VXLAN network identifier (flannel: 1).
    pub vni: u32,
}

impl Repr {
    /// The header length.
    pub const LEN: usize = field::PAYLOAD;

    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, WireError> {
        Ok(Repr { vni: packet.vni() })
    }

    /// Writes the header (zeroing the reserved bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.buffer.as_mut()[..field::PAYLOAD].fill(0);
        packet.set_flags(FLAG_VNI);
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_short_or_flagless() {
        let mut buf = [0xffu8; 12];
        Repr { vni: 0x0a0b0c }.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..8], &[0x08, 0, 0, 0, 0x0a, 0x0b, 0x0c, 0]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), Repr { vni: 0x0a0b0c });
        assert_eq!(p.payload(), &[0xff; 4]);
        assert_eq!(
            Packet::new_checked(&buf[..7]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Packet::new_checked(&[0u8; 8][..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
