//! Incremental Server-Sent Events decoder: bytes in, complete `data` payloads out.
//! Network chunks split events anywhere (even inside a UTF-8 character), so bytes are buffered
//! until a full line arrives.

#[derive(Debug, Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    data: Option<String>,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the data of every event completed by them, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut consumed = 0;
        while let Some(newline) = self.pending[consumed..].iter().position(|b| *b == b'\n') {
            let end = consumed + newline;
            let line = &self.pending[consumed..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = String::from_utf8_lossy(line).into_owned();
            consumed = end + 1;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.pending.drain(..consumed);
        events
    }

    /// The event left open when the stream ended without a final blank line.
    pub fn finish(&mut self) -> Option<String> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            let line = String::from_utf8_lossy(&rest).into_owned();
            if let Some(event) = self.line(line.trim_end_matches('\r')) {
                return Some(event);
            }
        }
        self.data.take()
    }

    fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.push(b"data: {\"a\"").is_empty());
        assert!(decoder.push(b":1}\n").is_empty());
        assert_eq!(
            decoder.push(b"\ndata: [DONE]\n\n"),
            vec!["{\"a\":1}", "[DONE]"]
        );
    }

    #[test]
    fn crlf_comments_other_fields_and_multiline_data() {
        let mut decoder = SseDecoder::new();
        let events = decoder.push(b": keep-alive\r\n\r\nevent: x\r\ndata: one\r\ndata:two\r\n\r\n");
        assert_eq!(events, vec!["one\ntwo"]);
    }

    #[test]
    fn utf8_split_inside_a_character_survives() {
        let text = "data: h\u{e9}llo\n\n".as_bytes();
        let split = text.iter().position(|b| *b == 0xc3).unwrap() + 1;
        let mut decoder = SseDecoder::new();
        assert!(decoder.push(&text[..split]).is_empty());
        assert_eq!(decoder.push(&text[split..]), vec!["h\u{e9}llo"]);
    }

    #[test]
    fn unterminated_last_event_is_returned_by_finish() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.push(b"data: tail").is_empty());
        assert_eq!(decoder.finish().as_deref(), Some("tail"));
        assert_eq!(decoder.finish(), None);
    }
}
