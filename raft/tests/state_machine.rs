//! The sled state machine on its own: publication to readers, restart from the snapshot, and
//! refusal of a corrupt snapshot.

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta};
use stator_raft::model::{Applied, Batch, Command, CommandError};
use stator_raft::store::{open_db, open_stores};
use stator_raft::{PeerAddr, TypeConfig};
use tempfile::TempDir;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn put(key: &str) -> Command {
    Command::PutMeta {
        key: key.to_owned(),
        value: "v".to_owned(),
    }
}

fn normal(index: u64, cmds: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Batch(cmds)),
    }
}

/// Apply publishes to readers and writes nothing; the durable image is the newest snapshot,
/// so a reopened state machine starts there and openraft re-applies the log after it.
#[tokio::test]
async fn applied_state_is_published_and_a_reopen_resumes_from_the_newest_snapshot() {
    use openraft::RaftSnapshotBuilder;

    let dir = TempDir::new().expect("temp dir");
    let membership = Membership::new(
        vec![[1u64].into_iter().collect()],
        BTreeMap::from([(
            1u64,
            PeerAddr {
                quic: "127.0.0.1:1".to_owned(),
            },
        )]),
    );
    {
        let db = open_db(dir.path()).await.expect("open");
        let (_log, mut sm) = open_stores(&db).expect("stores");
        let mut readers = sm.subscribe();
        let entries = vec![
            Entry {
                log_id: log_id(1),
                payload: EntryPayload::Membership(membership.clone()),
            },
            normal(
                2,
                vec![
                    put("a"),
                    Command::DeleteMeta {
                        key: "zz".to_owned(),
                    },
                ],
            ),
            normal(3, vec![put("b")]),
        ];
        let responses = sm.apply(entries).await.expect("apply");
        assert_eq!(responses.len(), 3);
        assert!(responses[0].0.is_empty());
        assert_eq!(responses[1].0[0], Ok(Applied::Done));
        assert_eq!(
            responses[1].0[1],
            Err(CommandError::UnknownMetaKey("zz".to_owned()))
        );
        assert!(readers.has_changed().expect("sender alive"));
        assert_eq!(readers.borrow_and_update().meta.len(), 2);

        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(3)));

        let later: Vec<_> = (4..=300)
            .map(|i| normal(i, vec![put(&format!("k{i}"))]))
            .collect();
        sm.apply(later).await.expect("apply");
        assert_eq!(readers.borrow_and_update().meta.len(), 299);
        db.flush_async().await.expect("flush");
    }
    let db = open_db(dir.path()).await.expect("reopen");
    let (_log, mut sm) = open_stores(&db).expect("stores");
    let (applied, stored_membership) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(3)), "starts at the snapshot");
    assert_eq!(stored_membership.log_id(), &Some(log_id(1)));
    assert_eq!(stored_membership.membership(), &membership);
    let state = sm.subscribe().borrow().clone();
    assert!(state.meta.contains_key("a") && state.meta.contains_key("b"));
    assert!(
        !state.meta.contains_key("k4"),
        "entries after the snapshot come back from the log, not from an image"
    );
}

#[tokio::test]
async fn corrupt_snapshot_is_refused_and_changes_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let db = open_db(dir.path()).await.expect("open");
    let (_log, mut sm) = open_stores(&db).expect("stores");
    sm.apply(vec![normal(1, vec![put("keep")])])
        .await
        .expect("apply");
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(50)),
        last_membership: Default::default(),
        snapshot_id: "bad".to_owned(),
    };
    let garbage = Box::new(Cursor::new(vec![0xff; 7]));
    assert!(sm.install_snapshot(&meta, garbage).await.is_err());
    let (applied, _) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1)));
    assert!(sm.subscribe().borrow().meta.contains_key("keep"));
    assert!(sm.get_current_snapshot().await.expect("read").is_none());
}
