//! etcd's gRPC on the wire, without generated code: protobuf fields encoded and decoded by
//! hand, and the gRPC length-prefixed message frame. Pure.

use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("protobuf message ends inside a field")]
    Truncated,
    #[error("protobuf varint longer than 10 bytes")]
    VarintTooLong,
    #[error("protobuf wire type {0} is not supported")]
    UnknownWireType(u8),
    #[error("gRPC frame is compressed (flag {0}); compression was not negotiated")]
    Compressed(u8),
    #[error("gRPC frame announces {announced} bytes but carries {carried}")]
    FrameLength { announced: usize, carried: usize },
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn put_bytes_field(out: &mut BytesMut, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

/// `etcdserverpb.PutRequest { key = 1; value = 2; }`.
pub fn put_request(key: &[u8], value: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(key.len() + value.len() + 8);
    put_bytes_field(&mut out, 1, key);
    put_bytes_field(&mut out, 2, value);
    out.freeze()
}

/// `etcdserverpb.RangeRequest { key = 1; }`: a linearizable get of one key.
pub fn range_request(key: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(key.len() + 4);
    put_bytes_field(&mut out, 1, key);
    out.freeze()
}

/// One gRPC message frame: uncompressed flag, 4-byte big-endian length, message.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 5);
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// The message inside a unary response body (one frame; an empty body is an empty message).
pub fn grpc_unframe(body: &[u8]) -> Result<&[u8], WireError> {
    if body.is_empty() {
        return Ok(body);
    }
    let header: [u8; 5] = body
        .get(..5)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Truncated)?;
    if header[0] != 0 {
        return Err(WireError::Compressed(header[0]));
    }
    let announced = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let carried = body.len() - 5;
    if announced > carried {
        return Err(WireError::FrameLength { announced, carried });
    }
    Ok(&body[5..5 + announced])
}

/// A decoded protobuf field value; fixed-width fields are kept as their integer bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Varint(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
}

fn read_varint(buf: &[u8], at: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(*at).ok_or(WireError::Truncated)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintTooLong)
}

fn take<'a>(buf: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], WireError> {
    let end = at.checked_add(len).ok_or(WireError::Truncated)?;
    let slice = buf.get(*at..end).ok_or(WireError::Truncated)?;
    *at = end;
    Ok(slice)
}

/// Every top-level field of a protobuf message, in wire order.
pub fn fields(buf: &[u8]) -> Result<Vec<(u32, FieldValue<'_>)>, WireError> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < buf.len() {
        let key = read_varint(buf, &mut at)?;
        let field = (key >> 3) as u32;
        let value = match (key & 7) as u8 {
            0 => FieldValue::Varint(read_varint(buf, &mut at)?),
            1 => FieldValue::Fixed(u64::from_le_bytes(
                take(buf, &mut at, 8)?
                    .try_into()
                    .map_err(|_| WireError::Truncated)?,
            )),
            2 => {
                let len = read_varint(buf, &mut at)? as usize;
                FieldValue::Bytes(take(buf, &mut at, len)?)
            }
            5 => FieldValue::Fixed(u64::from(u32::from_le_bytes(
                take(buf, &mut at, 4)?
                    .try_into()
                    .map_err(|_| WireError::Truncated)?,
            ))),
            other => return Err(WireError::UnknownWireType(other)),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn varint_field(message: &[u8], number: u32) -> Result<Option<u64>, WireError> {
    Ok(fields(message)?.into_iter().find_map(|(n, v)| match v {
        FieldValue::Varint(x) if n == number => Some(x),
        _ => None,
    }))
}

/// From an `etcdserverpb.StatusResponse`: (the answering member's id, the leader's id).
/// `header = 1 { member_id = 2 }`, `leader = 4`.
pub fn status_member_and_leader(message: &[u8]) -> Result<(Option<u64>, Option<u64>), WireError> {
    let mut member = None;
    let mut leader = None;
    for (number, value) in fields(message)? {
        match (number, value) {
            (1, FieldValue::Bytes(header)) => member = varint_field(header, 2)?,
            (4, FieldValue::Varint(id)) => leader = Some(id).filter(|&id| id != 0),
            _ => {}
        }
    }
    Ok((member, leader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_request_matches_protoc_encoding() {
        // protoc --encode=etcdserverpb.PutRequest <<< 'key: "k" value: "vv"'
        assert_eq!(&put_request(b"k", b"vv")[..], b"\x0a\x01k\x12\x02vv");
    }

    #[test]
    fn long_fields_get_multi_byte_lengths() {
        let value = vec![7u8; 300];
        let encoded = put_request(b"key", &value);
        // 300 = 0b10_0101100 -> varint ac 02
        assert_eq!(&encoded[5..8], b"\x12\xac\x02");
        let decoded = fields(&encoded).unwrap();
        assert_eq!(
            decoded,
            vec![
                (1, FieldValue::Bytes(b"key")),
                (2, FieldValue::Bytes(&value[..]))
            ]
        );
    }

    #[test]
    fn frame_round_trips_and_rejects_short_bodies() {
        let message = range_request(b"abc");
        let framed = grpc_frame(&message);
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(grpc_unframe(&framed).unwrap(), &message[..]);
        assert_eq!(
            grpc_unframe(&framed[..7]),
            Err(WireError::FrameLength {
                announced: 5,
                carried: 2
            })
        );
        assert_eq!(
            grpc_unframe(&[1, 0, 0, 0, 0]),
            Err(WireError::Compressed(1))
        );
        assert_eq!(grpc_unframe(&[0, 0]), Err(WireError::Truncated));
    }

    #[test]
    fn status_response_yields_member_and_leader() {
        // header { cluster_id: 1 member_id: 300 revision: 5 } version: "3.4" leader: 300 raftTerm: 2
        let header = b"\x08\x01\x10\xac\x02\x18\x05";
        let mut message = vec![0x0a, header.len() as u8];
        message.extend_from_slice(header);
        message.extend_from_slice(b"\x12\x033.4\x20\xac\x02\x30\x02");
        assert_eq!(
            status_member_and_leader(&message).unwrap(),
            (Some(300), Some(300))
        );
        // No leader elected: field absent or zero.
        assert_eq!(status_member_and_leader(b"\x20\x00").unwrap(), (None, None));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(fields(b"\x0a\x05ab"), Err(WireError::Truncated));
        assert_eq!(fields(b"\x0b"), Err(WireError::UnknownWireType(3)));
        assert_eq!(
            fields(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(WireError::VarintTooLong)
        );
    }
}
