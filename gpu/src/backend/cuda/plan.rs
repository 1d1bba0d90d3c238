//! Host-side planning of one forward pass: validates the batch and lays out every per-token
//! and per-sequence index the kernels read, as one i32 array uploaded in a single copy.

use super::kernels::PREFILL_QUERY_TILE;
use crate::backend::{BackendError, SeqStep};

/// Offsets (in i32 elements) of each section of the metadata array.
#[derive(Clone, Debug, Default)]
pub struct StepPlan {
    pub rows: usize,
    pub num_steps: usize,
    pub max_blocks: usize,
    pub decode_entries: usize,
    pub max_decode_ctx: usize,
    pub prefill_tiles: usize,
    pub logit_rows: usize,
    pub meta: Vec<i32>,
    pub tokens_at: usize,
    pub positions_at: usize,
    pub slots_at: usize,
    pub logit_rows_at: usize,
    pub dec_rows_at: usize,
    pub dec_ctx_at: usize,
    pub dec_seq_at: usize,
    pub tiles_at: usize,
    pub tables_at: usize,
}

pub struct Limits {
    pub vocab_size: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub max_batch_tokens: usize,
    pub max_num_seqs: usize,
}

pub fn validate(batch: &[SeqStep<'_>], lim: &Limits) -> Result<(), BackendError> {
    if batch.len() > lim.max_num_seqs {
        return Err(BackendError::InvalidBatch(format!(
            "{} sequences in one step, this backend was sized for {}",
            batch.len(),
            lim.max_num_seqs
        )));
    }
    let rows: usize = batch.iter().map(|s| s.tokens.len()).sum();
    if rows > lim.max_batch_tokens {
        return Err(BackendError::InvalidBatch(format!(
            "{rows} tokens in one step, this backend was sized for {}",
            lim.max_batch_tokens
        )));
    }
    super::super::validate_steps(batch, lim.vocab_size, lim.num_blocks, lim.block_size)?;
    // Positions travel to the kernels as i32 (and doubled in places).
    for (i, step) in batch.iter().enumerate() {
        let end = step.start_pos + step.tokens.len();
        if end > i32::MAX as usize / 2 {
            return Err(BackendError::InvalidBatch(format!(
                "step {i}: position {end} is too large"
            )));
        }
    }
    Ok(())
}

impl StepPlan {
    /// Lays out the batch (already validated). Single-token steps go to the decode kernel;
    /// longer ones are cut into query tiles for the prefill kernel.
    pub fn build(&mut self, batch: &[SeqStep<'_>], block_size: usize) {
        let rows: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let max_blocks = batch
            .iter()
            .map(|s| (s.start_pos + s.tokens.len()).div_ceil(block_size))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut tokens = Vec::with_capacity(rows);
        let mut positions = Vec::with_capacity(rows);
        let mut slots = Vec::with_capacity(rows);
        let mut logit_rows = Vec::new();
        let (mut dec_rows, mut dec_ctx, mut dec_seq) = (Vec::new(), Vec::new(), Vec::new());
        let mut tiles = Vec::new();
        let mut tables = vec![0i32; batch.len() * max_blocks];
        let mut row = 0usize;
        let mut max_decode_ctx = 0usize;
        for (seq, step) in batch.iter().enumerate() {
            let len = step.tokens.len();
            let used = (step.start_pos + len).div_ceil(block_size);
            for (slot, &block) in tables[seq * max_blocks..]
                .iter_mut()
                .zip(&step.block_table[..used])
            {
                *slot = block as i32;
            }
            for (j, &token) in step.tokens.iter().enumerate() {
                let pos = step.start_pos + j;
                tokens.push(token as i32);
                positions.push(pos as i32);
                slots.push(
                    (step.block_table[pos / block_size] as usize * block_size + pos % block_size)
                        as i32,
                );
            }
            if len == 1 {
                dec_rows.push(row as i32);
                dec_ctx.push((step.start_pos + 1) as i32);
                dec_seq.push(seq as i32);
                max_decode_ctx = max_decode_ctx.max(step.start_pos + 1);
            } else {
                for offset in (0..len).step_by(PREFILL_QUERY_TILE) {
                    tiles.extend_from_slice(&[
                        seq as i32,
                        (row + offset) as i32,
                        (step.start_pos + offset) as i32,
                        PREFILL_QUERY_TILE.min(len - offset) as i32,
                    ]);
                }
            }
            row += len;
            if step.want_logits {
                logit_rows.push((row - 1) as i32);
            }
        }
        self.rows = rows;
        self.num_steps = batch.len();
        self.max_blocks = max_blocks;
        self.decode_entries = dec_rows.len();
        self.max_decode_ctx = max_decode_ctx;
        self.prefill_tiles = tiles.len() / 4;
        self.logit_rows = logit_rows.len();
        let meta = &mut self.meta;
        meta.clear();
        let mut push = |section: &[i32]| {
            let at = meta.len();
            meta.extend_from_slice(section);
            // Keep every section 16-byte aligned.
            while !meta.len().is_multiple_of(4) {
                meta.push(0);
            }
            at
        };
        self.tokens_at = push(&tokens);
        self.positions_at = push(&positions);
        self.slots_at = push(&slots);
        self.logit_rows_at = push(&logit_rows);
        self.dec_rows_at = push(&dec_rows);
        self.dec_ctx_at = push(&dec_ctx);
        self.dec_seq_at = push(&dec_seq);
        self.tiles_at = push(&tiles);
        self.tables_at = push(&tables);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_and_prefill_steps_are_routed_and_indexed() {
        let table_a = [3u32, 1];
        let table_b = [2u32];
        let prompt: Vec<u32> = (0..70).collect();
        let table_c = [4u32, 5, 6, 7, 8];
        let batch = [
            SeqStep {
                tokens: &[9],
                start_pos: 5,
                block_table: &table_a,
                want_logits: true,
            },
            SeqStep {
                tokens: &prompt,
                start_pos: 0,
                block_table: &table_c,
                want_logits: true,
            },
            SeqStep {
                tokens: &[7],
                start_pos: 0,
                block_table: &table_b,
                want_logits: false,
            },
        ];
        let mut plan = StepPlan::default();
        plan.build(&batch, 16);
        assert_eq!(plan.rows, 72);
        assert_eq!(plan.decode_entries, 2);
        assert_eq!(
            plan.prefill_tiles, 2,
            "70 tokens make a 64-row tile and a 6-row tile"
        );
        assert_eq!(plan.max_blocks, 5);
        // Position 5 of sequence 0 lives in block 3, offset 5.
        assert_eq!(plan.meta[plan.slots_at], 3 * 16 + 5);
        // Token 20 of the prompt: block table_c[1] = 5, offset 4.
        assert_eq!(plan.meta[plan.slots_at + 1 + 20], 5 * 16 + 4);
        assert_eq!(&plan.meta[plan.dec_ctx_at..plan.dec_ctx_at + 2], &[6, 1]);
        assert_eq!(
            &plan.meta[plan.logit_rows_at..plan.logit_rows_at + 2],
            &[0, 70]
        );
        assert_eq!(
            &plan.meta[plan.tiles_at + 4..plan.tiles_at + 8],
            &[1, 65, 64, 6]
        );
    }

    #[test]
    fn out_of_range_blocks_and_tokens_are_rejected() {
        let lim = Limits {
            vocab_size: 10,
            num_blocks: 4,
            block_size: 16,
            max_batch_tokens: 64,
            max_num_seqs: 4,
        };
        let ok = [SeqStep {
            tokens: &[1],
            start_pos: 0,
            block_table: &[3],
            want_logits: true,
        }];
        assert!(validate(&ok, &lim).is_ok());
        let bad_block = [SeqStep {
            tokens: &[1],
            start_pos: 0,
            block_table: &[4],
            want_logits: true,
        }];
        assert!(matches!(
            validate(&bad_block, &lim),
            Err(BackendError::InvalidBatch(_))
        ));
        let bad_token = [SeqStep {
            tokens: &[10],
            start_pos: 0,
            block_table: &[0],
            want_logits: true,
        }];
        assert!(matches!(
            validate(&bad_token, &lim),
            Err(BackendError::InvalidBatch(_))
        ));
        let short_table = [SeqStep {
            tokens: &[1],
            start_pos: 16,
            block_table: &[0],
            want_logits: true,
        }];
        assert!(matches!(
            validate(&short_table, &lim),
            Err(BackendError::InvalidBatch(_))
        ));
    }
}
