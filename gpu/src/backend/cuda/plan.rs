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
    /// Logit rows the caller asked for (the first `output_rows` rows of the logits buffer);
    /// equals `logit_rows` except in a padded decode plan, which computes logits for its pad
    /// rows too.
    pub output_rows: usize,
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
        self.output_rows = logit_rows.len();
        self.lay_out(Sections {
            tokens: &tokens,
            positions: &positions,
            slots: &slots,
            logit_rows: &logit_rows,
            dec_rows: &dec_rows,
            dec_ctx: &dec_ctx,
            dec_seq: &dec_seq,
            tiles: &tiles,
            tables: &tables,
        });
    }

    /// Lays out a decode-only batch (every step one token, all wanting logits; the caller
    /// checks) padded to `bucket` sequences with block tables `width` entries wide, so the
    /// launch parameters depend on (`bucket`, `width`) alone and one captured graph replays
    /// for any batch of that shape. Pad sequences decode token 0 at position 0 into
    /// `sink_block`, a block no real sequence owns, so they read and write only there.
    pub fn build_padded_decode(
        &mut self,
        batch: &[SeqStep<'_>],
        block_size: usize,
        bucket: usize,
        width: usize,
        sink_block: u32,
    ) {
        let n = batch.len();
        let mut tokens = vec![0i32; bucket];
        let mut positions = vec![0i32; bucket];
        let mut slots = vec![(sink_block as usize * block_size) as i32; bucket];
        let identity: Vec<i32> = (0..bucket as i32).collect();
        let mut dec_ctx = vec![1i32; bucket];
        let mut tables = vec![0i32; bucket * width];
        for pad in n..bucket {
            tables[pad * width] = sink_block as i32;
        }
        let mut max_decode_ctx = 1;
        for (seq, step) in batch.iter().enumerate() {
            let pos = step.start_pos;
            let used = (pos + 1).div_ceil(block_size);
            for (slot, &block) in tables[seq * width..]
                .iter_mut()
                .zip(&step.block_table[..used])
            {
                *slot = block as i32;
            }
            tokens[seq] = step.tokens[0] as i32;
            positions[seq] = pos as i32;
            slots[seq] = (step.block_table[pos / block_size] as usize * block_size
                + pos % block_size) as i32;
            dec_ctx[seq] = (pos + 1) as i32;
            max_decode_ctx = max_decode_ctx.max(pos + 1);
        }
        self.rows = bucket;
        self.num_steps = bucket;
        self.max_blocks = width;
        self.decode_entries = bucket;
        self.max_decode_ctx = max_decode_ctx;
        self.prefill_tiles = 0;
        self.logit_rows = bucket;
        self.output_rows = n;
        self.lay_out(Sections {
            tokens: &tokens,
            positions: &positions,
            slots: &slots,
            logit_rows: &identity,
            dec_rows: &identity,
            dec_ctx: &dec_ctx,
            dec_seq: &identity,
            tiles: &[],
            tables: &tables,
        });
    }

    fn lay_out(&mut self, sections: Sections<'_>) {
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
        self.tokens_at = push(sections.tokens);
        self.positions_at = push(sections.positions);
        self.slots_at = push(sections.slots);
        self.logit_rows_at = push(sections.logit_rows);
        self.dec_rows_at = push(sections.dec_rows);
        self.dec_ctx_at = push(sections.dec_ctx);
        self.dec_seq_at = push(sections.dec_seq);
        self.tiles_at = push(sections.tiles);
        self.tables_at = push(sections.tables);
    }
}

/// The metadata sections of one step, in upload order.
struct Sections<'a> {
    tokens: &'a [i32],
    positions: &'a [i32],
    slots: &'a [i32],
    logit_rows: &'a [i32],
    dec_rows: &'a [i32],
    dec_ctx: &'a [i32],
    dec_seq: &'a [i32],
    tiles: &'a [i32],
    tables: &'a [i32],
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
    fn padded_decode_plans_depend_on_the_bucket_not_the_batch() {
        let table_a = [3u32, 1];
        let table_b = [2u32];
        let batch = [
            SeqStep {
                tokens: &[9],
                start_pos: 20,
                block_table: &table_a,
                want_logits: true,
            },
            SeqStep {
                tokens: &[4],
                start_pos: 2,
                block_table: &table_b,
                want_logits: true,
            },
        ];
        let sink = 99;
        let mut plan = StepPlan::default();
        plan.build_padded_decode(&batch, 16, 4, 4, sink);
        assert_eq!((plan.rows, plan.decode_entries, plan.logit_rows), (4, 4, 4));
        assert_eq!(plan.output_rows, 2, "callers read the real rows only");
        assert_eq!(plan.max_blocks, 4);
        let layout = plan.meta.len();
        // Real rows first, in batch order; pad rows decode position 0 into the sink block.
        assert_eq!(
            &plan.meta[plan.tokens_at..plan.tokens_at + 4],
            &[9, 4, 0, 0]
        );
        assert_eq!(
            &plan.meta[plan.slots_at..plan.slots_at + 4],
            &[16 + 4, 2 * 16 + 2, 99 * 16, 99 * 16]
        );
        assert_eq!(
            &plan.meta[plan.dec_ctx_at..plan.dec_ctx_at + 4],
            &[21, 3, 1, 1]
        );
        assert_eq!(
            &plan.meta[plan.tables_at..plan.tables_at + 16],
            &[3, 1, 0, 0, 2, 0, 0, 0, 99, 0, 0, 0, 99, 0, 0, 0]
        );
        // Another batch of the same bucket has the same layout (a graph replays it).
        plan.build_padded_decode(&batch[1..], 16, 4, 4, sink);
        assert_eq!(plan.meta.len(), layout);
        assert_eq!(plan.output_rows, 1);
        assert_eq!(
            &plan.meta[plan.tokens_at..plan.tokens_at + 4],
            &[4, 0, 0, 0]
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
