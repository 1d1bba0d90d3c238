//! openraft's storage conformance suite against the sled log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use stator_raft::store::{open_db, open_stores, SledLogStore, SledStateMachine};
use stator_raft::{NodeId, TypeConfig};
use tempfile::TempDir;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, SledLogStore, SledStateMachine, TempDir> for SledStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, SledLogStore, SledStateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let db = open_db(dir.path()).await.expect("open sled");
        let (log, sm) = open_stores(&db).expect("open stores");
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_stores_pass_openraft_suite() {
    if let Err(e) = Suite::test_all(SledStoreBuilder) {
        panic!("storage suite failed: {e}");
    }
}
