//! `stator peer`: bootstrap, join or restart, then run the member until shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use stator_raft::model::{Command, NodeInfo, NodeStatus, WorkerId};
use stator_raft::types::PeerAddr;
use stator_raft::{RaftConfig, RaftNode};
use stator_transport::{
    ClusterCa, Endpoint, JoinToken, NodeIdentity, NodeKey, RpcError, TransportConfig,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cli::{PeerArgs, PeerRole};
use crate::cluster::rpc::{Admit, AdmitRequest, Join, JoinRequest};
use crate::cluster::{self, ClusterConfig};
use crate::datadir::{random_secret, DataDir, NodeRecord};
use crate::frontend::{FrontendConfig, RemoteTokenSource};
use crate::http;
use crate::openai::TokenSource;
use crate::router::RouterConfig;
use crate::serving;
use crate::telemetry;
use crate::util::wall_ms;
use crate::worker::drain::{self, Drain};
use crate::worker::kv_transfer::KvTransferConfig;
use crate::worker::{self, ServedEngine, WorkerConfig};

/// How this start relates to the data dir.
enum Start {
    Bootstrap { token: JoinToken },
    Join { via: SocketAddr },
    Restart,
}

pub async fn run(args: PeerArgs) -> Result<()> {
    let metrics = telemetry::install_metrics_recorder()?;
    let (quic_addr, http_addr) = advertised_addresses(&args)?;
    let data_dir = DataDir::open(&args.data_dir)?;

    let (record, identity, start) = match data_dir.record()? {
        Some(record) => {
            check_token_matches(&args, &record)?;
            if args.join.is_some() {
                info!(cluster = %record.cluster_id, "data dir already belongs to a cluster; --join ignored, rejoining");
            }
            let identity = NodeIdentity::load(&data_dir.tls_dir()).with_context(|| {
                format!(
                    "cannot load the node identity from {}",
                    data_dir.tls_dir().display()
                )
            })?;
            (record, identity, Start::Restart)
        }
        None => match args.join {
            None => bootstrap_identity(&data_dir)?,
            Some(via) => join_identity(&data_dir, &args, via).await?,
        },
    };
    info!(node = record.node_id, cluster = %record.cluster_id, quic = %quic_addr, http = %http_addr, "starting peer");

    // Bind both ports before anything else touches the cluster, so a port in use fails fast.
    let http_listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {}: is another process using it?",
                args.http
            )
        })?;
    let endpoint = Endpoint::bind(args.listen, identity.clone(), TransportConfig::default())
        .with_context(|| format!("cannot listen for QUIC on {}", args.listen))?;

    let raft_cfg = RaftConfig {
        snapshot_every_entries: args.raft_snapshot_every,
        ..RaftConfig::default()
    };
    let raft = Arc::new(
        RaftNode::open(
            &data_dir.raft_dir(),
            record.node_id,
            endpoint.clone(),
            raft_cfg,
        )
        .await
        .context("cannot open the Raft store")?,
    );

    let ca_cert_pem = std::fs::read_to_string(data_dir.tls_dir().join("ca.pem"))
        .context("cannot read the cluster CA certificate")?;
    let ca = Arc::new(
        ClusterCa::from_pem(&ca_cert_pem, &data_dir.ca_key_pem()?)
            .context("cannot load the cluster CA")?,
    );
    let admin_token = data_dir.admin_token()?;
    let self_info = NodeInfo {
        quic_addr: quic_addr.to_string(),
        http_addr: http_addr.to_string(),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        gpus: Vec::new(),
        status: NodeStatus::Up,
        status_since_ms: wall_ms(),
        joined_at_ms: wall_ms(),
    };
    cluster::serve_membership_rpcs(
        &endpoint,
        raft.clone(),
        ca,
        record.cluster_id.clone(),
        admin_token.clone(),
    );

    match &start {
        Start::Bootstrap { token } => {
            raft.bootstrap(PeerAddr {
                quic: quic_addr.to_string(),
            })
            .await
            .context("cannot bootstrap the cluster")?;
            raft.write(vec![
                Command::InitCluster {
                    cluster_id: record.cluster_id.clone(),
                },
                Command::SetJoinSecret {
                    secret_hash: token.secret_hash(),
                },
                cluster::register_command(record.node_id, &self_info),
            ])
            .await
            .context("cannot record the new cluster")?;
            print_bootstrap_banner(token, &data_dir, http_addr);
        }
        Start::Join { via } => {
            admit(
                &endpoint,
                *via,
                &self_info,
                Duration::from_secs(args.join_timeout_s),
            )
            .await?;
            info!(via = %via, "joined the cluster");
        }
        Start::Restart => {}
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let cluster_cfg = ClusterConfig {
        node_id: record.node_id,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(1)),
        down_after: Duration::from_millis(args.down_after_ms.max(1)),
        target_voters: args.voters,
        replace_voter_after: Duration::from_secs(args.replace_voter_after_s),
    };
    let health = cluster::spawn_duties(
        endpoint.clone(),
        raft.clone(),
        cluster_cfg,
        shutdown_rx.clone(),
    );

    let frontend_only = args.role == PeerRole::Frontend;
    if frontend_only && args.local_engine_only {
        bail!("--role frontend runs no engine: it cannot serve with --local-engine-only");
    }
    let leased_source = (!args.local_engine_only).then(|| {
        let cfg = FrontendConfig {
            migration_limit: args.migration_limit,
            router: RouterConfig {
                overlap_weight: args.router_overlap_weight,
                temperature: args.router_temperature,
                disagg_min_tokens: args.disagg_min_tokens,
                block_size: args.engine.block_size,
                ..RouterConfig::default()
            },
            ..FrontendConfig::default()
        };
        Arc::new(
            RemoteTokenSource::new(raft.clone(), endpoint.clone(), cfg)
                .with_load_table(health.load().table()),
        ) as Arc<dyn TokenSource>
    });
    let serving = match (args.role, leased_source) {
        (PeerRole::Frontend, Some(source)) => serving::build_frontend(&args.engine, source).await?,
        (_, source) => serving::build(&args.engine, source).await?,
    };
    if let (PeerRole::Worker(role), Some(engine)) = (args.role, &serving.engine) {
        let cfg = WorkerConfig {
            role,
            lease_timeout: Duration::from_millis(
                args.lease_timeout_ms
                    .unwrap_or(args.down_after_ms / 2)
                    .max(1),
            ),
            kv_transfer: KvTransferConfig {
                total: Duration::from_millis(args.kv_transfer_timeout_ms.max(1)),
                ..KvTransferConfig::default()
            },
            ..WorkerConfig::default()
        };
        let me = worker::start(
            &endpoint,
            raft.clone(),
            health.clone(),
            ServedEngine {
                handle: engine.clone(),
                model: serving.model_name.clone(),
                device: serving.device.clone(),
            },
            cfg,
            shutdown_rx.clone(),
        );
        tokio::spawn(drain::run(
            Drain {
                raft: raft.clone(),
                engine: engine.clone(),
                me,
                timeout: Duration::from_secs(args.drain_timeout_s),
            },
            shutdown_rx.clone(),
        ));
        if !args.local_engine_only {
            // Until its worker is registered this peer's API could only answer 503.
            await_registration(&raft, me, WORKER_REGISTRATION_WAIT).await;
        }
    }
    let app = http::App {
        node_id: record.node_id,
        cluster_id: record.cluster_id.clone(),
        join_token: data_dir.join_token().ok(),
        raft: raft.clone(),
        health,
        metrics,
        admin_token,
        shutdown: shutdown_tx.clone(),
    };
    let served = http::serve(http_listener, app, serving.router, shutdown_rx).await;
    if let Some(engine) = &serving.engine {
        engine.shutdown();
    }

    info!("shutting down");
    let _ = shutdown_tx.send(true);
    raft.shutdown().await;
    endpoint.close();
    served
}

/// How long a peer with an engine waits for its worker to be registered before it serves the
/// API anyway.
const WORKER_REGISTRATION_WAIT: Duration = Duration::from_secs(30);

async fn await_registration(raft: &RaftNode, me: WorkerId, wait: Duration) {
    let mut state = raft.state();
    let registered =
        tokio::time::timeout(wait, state.wait_for(|s| s.workers.contains_key(&me))).await;
    if !matches!(registered, Ok(Ok(_))) {
        warn!(worker = %me, after = ?wait, "this peer's worker is not registered yet; serving the API anyway");
    }
}

fn advertised_addresses(args: &PeerArgs) -> Result<(SocketAddr, SocketAddr)> {
    let quic = match args.advertise {
        Some(a) => a,
        None if args.listen.ip().is_unspecified() => bail!(
            "--listen {} is a wildcard address: give --advertise HOST:PORT, the address other peers use to reach this one",
            args.listen
        ),
        None => args.listen,
    };
    let http = match args.advertise_http {
        Some(a) => a,
        None if args.http.ip().is_unspecified() => SocketAddr::new(quic.ip(), args.http.port()),
        None => args.http,
    };
    Ok((quic, http))
}

fn check_token_matches(args: &PeerArgs, record: &NodeRecord) -> Result<()> {
    let Some(text) = &args.token else {
        return Ok(());
    };
    let token: JoinToken = text.parse().context("--token is not a valid join token")?;
    let fp = token.ca_fingerprint.to_string();
    if fp != record.ca_fingerprint {
        bail!(
            "data dir {} belongs to another cluster ({}, CA {}), but --token is for CA {}. \
             Use an empty data dir to join this cluster.",
            args.data_dir.display(),
            record.cluster_id,
            record.ca_fingerprint,
            fp
        );
    }
    Ok(())
}

fn bootstrap_identity(data_dir: &DataDir) -> Result<(NodeRecord, NodeIdentity, Start)> {
    let node_id = new_node_id();
    let cluster_id = format!("stator-{}", &random_secret()[..12]);
    let ca = ClusterCa::generate(&cluster_id).context("cannot create the cluster CA")?;
    let identity = ca
        .issue_identity(node_id)
        .context("cannot issue this node's certificate")?;
    identity
        .save(&data_dir.tls_dir())
        .context("cannot save the node identity")?;
    data_dir.write_ca_key_pem(&ca.key_pem())?;
    data_dir.write_admin_token(&random_secret())?;
    let token = JoinToken::new(ca.fingerprint());
    data_dir.write_join_token(&token.to_string())?;
    let record = NodeRecord {
        node_id,
        cluster_id,
        ca_fingerprint: ca.fingerprint().to_string(),
    };
    data_dir.write_record(&record)?;
    Ok((record, identity, Start::Bootstrap { token }))
}

async fn join_identity(
    data_dir: &DataDir,
    args: &PeerArgs,
    via: SocketAddr,
) -> Result<(NodeRecord, NodeIdentity, Start)> {
    let text = args.token.as_deref().ok_or_else(|| {
        anyhow!("--join needs --token (printed by the first peer, or `stator ctl join-token`)")
    })?;
    let token: JoinToken = text.parse().context("--token is not a valid join token")?;
    let node_id = new_node_id();
    let key = NodeKey::generate().context("cannot create a node key")?;
    let request = JoinRequest {
        secret: token.secret.clone(),
        node_id,
        csr: key.csr(node_id)?,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.join_timeout_s);
    let mut backoff = Duration::from_millis(100);
    let response = loop {
        match stator_transport::call_join::<Join>(via, &token, &request, Duration::from_secs(3))
            .await
        {
            Ok(r) => break r,
            Err(e) if is_wrong_cluster(&e) => bail!(
                "the peer at {via} is not part of the cluster this token is for (its CA \
                 fingerprint differs from the token's): {e}"
            ),
            Err(e @ (RpcError::Remote(_) | RpcError::NotAuthorized(_))) => {
                bail!("the cluster at {via} refused to admit this peer: {e}")
            }
            Err(e) => {
                if tokio::time::Instant::now() + backoff > deadline {
                    bail!(
                        "could not reach a cluster member at {via} within {} s (last error: {e}). \
                         Check the address and that the peer is running.",
                        args.join_timeout_s
                    );
                }
                warn!(error = %e, retry_in = ?backoff, "join attempt failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    let identity = key
        .into_identity(node_id, response.cert_der, response.ca_cert_der)
        .context("the cluster returned an unusable certificate")?;
    identity.save(&data_dir.tls_dir())?;
    data_dir.write_ca_key_pem(&response.ca_key_pem)?;
    data_dir.write_admin_token(&response.admin_token)?;
    data_dir.write_join_token(text)?;
    let record = NodeRecord {
        node_id,
        cluster_id: response.cluster_id,
        ca_fingerprint: token.ca_fingerprint.to_string(),
    };
    data_dir.write_record(&record)?;
    Ok((record, identity, Start::Join { via }))
}

/// The server's certificate chain does not lead to the token's CA: retrying cannot help.
fn is_wrong_cluster(e: &RpcError) -> bool {
    matches!(e, RpcError::Connect(m) if m.contains("named by the join token"))
}

async fn admit(
    endpoint: &Endpoint,
    via: SocketAddr,
    info: &NodeInfo,
    timeout: Duration,
) -> Result<()> {
    let req = AdmitRequest {
        quic_addr: info.quic_addr.clone(),
        http_addr: info.http_addr.clone(),
        labels: info.labels.clone(),
        gpus: info.gpus.clone(),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match endpoint
            .call_timeout::<Admit>(via, &req, Duration::from_secs(10))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                bail!("joined the CA but could not become a member through {via}: {e}")
            }
            Err(e) => {
                warn!(error = %e, "admission attempt failed; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

fn new_node_id() -> u64 {
    // Non-zero, and small enough to read in tables.
    rand::random::<u64>() % 1_000_000_000_000 + 1
}

fn print_bootstrap_banner(token: &JoinToken, data_dir: &DataDir, http: SocketAddr) {
    println!("stator: bootstrapped a new cluster.");
    println!("  join token:  {token}");
    println!(
        "  admin token: in {}/admin.token",
        data_dir.root().display()
    );
    println!("  add peers:   stator peer --data-dir DIR --listen HOST:PORT --http HOST:PORT --join <this --listen> --token {token}");
    println!(
        "  operate:     stator ctl --peer http://{http} --data-dir {} members",
        data_dir.root().display()
    );
}
