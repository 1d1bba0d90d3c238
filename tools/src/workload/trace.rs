//! Request traces in the Azure LLM inference trace format: a CSV with a header naming
//! `TIMESTAMP`, `ContextTokens` and `GeneratedTokens` (any column order, extra columns ignored).
//! Timestamps are either `YYYY-MM-DD HH:MM:SS[.fraction]` or plain seconds.

use std::path::Path;

use chrono::NaiveDateTime;

/// One recorded request: when it arrived and how long its prompt and answer were.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRecord {
    /// Seconds since the first record of the trace.
    pub offset_s: f64,
    pub context_tokens: u32,
    pub generated_tokens: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("trace header must name TIMESTAMP, ContextTokens and GeneratedTokens; got {0:?}")]
    Header(String),
    #[error("trace line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("trace has no requests")]
    Empty,
}

pub fn load_trace(path: &Path) -> Result<Vec<TraceRecord>, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_trace(&text)
}

/// Parses a whole trace; records come back sorted by arrival, offsets relative to the earliest.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRecord>, TraceError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or(TraceError::Empty)?;
    let columns = Columns::from_header(header)?;
    let mut raw = Vec::new();
    for (index, line) in lines {
        let line_number = index + 1;
        raw.push(columns.parse(line).map_err(|reason| TraceError::Line {
            line: line_number,
            reason,
        })?);
    }
    if raw.is_empty() {
        return Err(TraceError::Empty);
    }
    raw.sort_by(|a, b| a.offset_s.total_cmp(&b.offset_s));
    let first = raw[0].offset_s;
    for record in &mut raw {
        record.offset_s -= first;
    }
    Ok(raw)
}

struct Columns {
    timestamp: usize,
    context: usize,
    generated: usize,
    width: usize,
}

impl Columns {
    fn from_header(header: &str) -> Result<Self, TraceError> {
        let names: Vec<&str> = header.split(',').map(str::trim).collect();
        let find = |wanted: &str| names.iter().position(|n| n.eq_ignore_ascii_case(wanted));
        match (
            find("TIMESTAMP"),
            find("ContextTokens"),
            find("GeneratedTokens"),
        ) {
            (Some(timestamp), Some(context), Some(generated)) => Ok(Self {
                timestamp,
                context,
                generated,
                width: names.len(),
            }),
            _ => Err(TraceError::Header(header.to_string())),
        }
    }

    /// The returned record's offset is absolute seconds; `parse_trace` rebases it.
    fn parse(&self, line: &str) -> Result<TraceRecord, String> {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != self.width {
            return Err(format!(
                "expected {} fields, found {}",
                self.width,
                fields.len()
            ));
        }
        let count = |index: usize, name: &str| {
            fields[index]
                .parse::<u32>()
                .map_err(|_| format!("{name} {:?} is not a token count", fields[index]))
        };
        Ok(TraceRecord {
            offset_s: parse_timestamp(fields[self.timestamp])?,
            context_tokens: count(self.context, "ContextTokens")?,
            generated_tokens: count(self.generated, "GeneratedTokens")?,
        })
    }
}

fn parse_timestamp(field: &str) -> Result<f64, String> {
    if let Ok(seconds) = field.parse::<f64>() {
        if seconds.is_finite() {
            return Ok(seconds);
        }
    }
    let parsed = NaiveDateTime::parse_from_str(field, "%Y-%m-%d %H:%M:%S%.f")
        .map_err(|e| format!("timestamp {field:?}: {e}"))?;
    let utc = parsed.and_utc();
    Ok(utc.timestamp() as f64 + f64::from(utc.timestamp_subsec_nanos()) * 1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_azure_format_with_sub_second_offsets() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:17:03.9799600,4808,10\n\
                    2023-11-16 18:17:04.0319600,3180,8\n\
                    2023-11-16 18:17:05.0000000,110,27\n";
        let records = parse_trace(text).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].offset_s, 0.0);
        assert!(
            (records[1].offset_s - 0.052).abs() < 1e-6,
            "{}",
            records[1].offset_s
        );
        assert!((records[2].offset_s - 1.02004).abs() < 1e-6);
        assert_eq!(records[0].context_tokens, 4808);
        assert_eq!(records[2].generated_tokens, 27);
    }

    #[test]
    fn accepts_reordered_columns_numeric_times_and_sorts() {
        let text = "GeneratedTokens,TIMESTAMP,ContextTokens\n5,12.5,100\n7,10.0,200\n";
        let records = parse_trace(text).unwrap();
        assert_eq!(records[0].context_tokens, 200);
        assert_eq!(records[1].offset_s, 2.5);
        assert_eq!(records[1].generated_tokens, 5);
    }

    #[test]
    fn bad_input_names_the_line() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,10,5\n2.0,ten,5\n";
        let err = parse_trace(text).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("ten"), "{err}");
        let err = parse_trace("time,in,out\n1,2,3\n").unwrap_err();
        assert!(matches!(err, TraceError::Header(_)));
        assert!(matches!(
            parse_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n"),
            Err(TraceError::Empty)
        ));
        let err = parse_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n1.0,10\n").unwrap_err();
        assert!(err.to_string().contains("expected 3 fields"), "{err}");
    }

    #[test]
    fn shared_traces_parse_when_present() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/azure2023_conv.csv");
        if !path.exists() {
            return;
        }
        let records = load_trace(&path).unwrap();
        assert!(records.len() > 1000);
        assert!(records.windows(2).all(|w| w[0].offset_s <= w[1].offset_s));
        assert!(records.iter().all(|r| r.context_tokens > 0));
    }
}
