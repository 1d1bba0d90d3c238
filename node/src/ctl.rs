//! `stator ctl`: the operator's client for a peer's admin API.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use serde_json::Value;

use crate::admin::{LeaseView, MemberView, SetRoleView, StatusView, WorkerView};
use crate::cli::{role_name, CtlArgs, CtlCommand, MetaCommand};
use crate::datadir::read_admin_token;
use crate::util::wall_ms;

pub async fn run(args: CtlArgs) -> Result<()> {
    let token = match (&args.token, &args.data_dir) {
        (Some(t), _) => t.clone(),
        (None, Some(dir)) => read_admin_token(dir)?,
        (None, None) => bail!("the admin token is needed: pass --token, set STATOR_ADMIN_TOKEN, or --data-dir of a peer"),
    };
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(args.timeout_s))
            .build()?,
        base: args.peer.trim_end_matches('/').to_string(),
        token,
    };
    let json = args.json;
    match args.command {
        CtlCommand::Members => {
            let v = client.call(Method::GET, "/admin/v1/members", None).await?;
            if json {
                return print_json(&v);
            }
            let members: Vec<MemberView> = serde_json::from_value(v)?;
            print_members(&members);
        }
        CtlCommand::Status => {
            let v = client.call(Method::GET, "/admin/v1/status", None).await?;
            if json {
                return print_json(&v);
            }
            let s: StatusView = serde_json::from_value(v)?;
            println!("node        {}", s.node_id);
            println!("cluster     {}", s.cluster_id);
            println!(
                "leader      {}{}",
                s.leader_id.map_or("none".into(), |l| l.to_string()),
                if s.is_leader { " (this peer)" } else { "" }
            );
            println!("term        {}", s.term);
            println!(
                "log index   {} (applied {})",
                s.last_log_index, s.applied_index
            );
            println!("voters      {:?}", s.voters);
            println!("learners    {:?}", s.learners);
            println!(
                "health      {}",
                s.health_reason.unwrap_or_else(|| "ok".into())
            );
        }
        CtlCommand::JoinToken => {
            let v = client
                .call(Method::GET, "/admin/v1/join-token", None)
                .await?;
            if json {
                return print_json(&v);
            }
            println!(
                "{}",
                v["token"]
                    .as_str()
                    .ok_or_else(|| anyhow!("malformed answer: {v}"))?
            );
        }
        CtlCommand::Remove { node } => {
            let v = client
                .call(
                    Method::POST,
                    &format!("/admin/v1/members/{node}/remove"),
                    None,
                )
                .await?;
            if json {
                return print_json(&v);
            }
            println!("removed node {node}");
        }
        CtlCommand::Leave => {
            let v = client.call(Method::POST, "/admin/v1/leave", None).await?;
            if json {
                return print_json(&v);
            }
            println!("node {} left the cluster and is shutting down", v["left"]);
        }
        CtlCommand::Roles => {
            let v = client.call(Method::GET, "/admin/v1/workers", None).await?;
            if json {
                return print_json(&v);
            }
            let workers: Vec<WorkerView> = serde_json::from_value(v)?;
            print_workers(&workers);
        }
        CtlCommand::Requests => {
            let v = client.call(Method::GET, "/admin/v1/leases", None).await?;
            if json {
                return print_json(&v);
            }
            let leases: Vec<LeaseView> = serde_json::from_value(v)?;
            print_leases(&leases, wall_ms());
        }
        CtlCommand::SetRole { worker, role } => {
            let v = client
                .call(
                    Method::POST,
                    &format!("/admin/v1/workers/{}/{}/role", worker.node, worker.slot),
                    Some(serde_json::json!({"role": role_name(role)})),
                )
                .await?;
            if json {
                return print_json(&v);
            }
            let answer: SetRoleView = serde_json::from_value(v)?;
            println!("{}", answer.message);
        }
        CtlCommand::Meta(cmd) => {
            let v = match cmd {
                MetaCommand::Get { key } => {
                    client.call(Method::GET, &meta_path(&key), None).await?
                }
                MetaCommand::Put { key, value } => {
                    client
                        .call(
                            Method::PUT,
                            &meta_path(&key),
                            Some(serde_json::json!({"value": value})),
                        )
                        .await?
                }
                MetaCommand::Delete { key } => {
                    client.call(Method::DELETE, &meta_path(&key), None).await?
                }
                MetaCommand::List => client.call(Method::GET, "/admin/v1/meta", None).await?,
            };
            if json {
                return print_json(&v);
            }
            match (&v.get("value"), v.as_object()) {
                (Some(Value::String(s)), _) => println!("{s}"),
                (_, Some(map)) if v.get("index").is_none() => {
                    for (k, val) in map {
                        println!("{k}\t{}", val.as_str().unwrap_or_default());
                    }
                }
                _ => println!("ok (log index {})", v["index"]),
            }
        }
    }
    Ok(())
}

fn meta_path(key: &str) -> String {
    let encoded: String = key
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/admin/v1/meta/{encoded}")
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the peer at {}", self.base))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .context("the peer closed the connection")?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            anyhow!("the peer answered {status} with a body that is not JSON: {text}")
        })?;
        if !status.is_success() {
            let msg = value["error"]["message"]
                .as_str()
                .unwrap_or(&text)
                .to_string();
            bail!("{status}: {msg}");
        }
        Ok(value)
    }
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_members(members: &[MemberView]) {
    println!(
        "{:<14} {:<8} {:<6} {:<22} {:<22} LEADER",
        "ID", "ROLE", "STATUS", "QUIC", "HTTP"
    );
    for m in members {
        println!(
            "{:<14} {:<8} {:<6} {:<22} {:<22} {}",
            m.id,
            m.raft_role,
            m.status,
            m.quic_addr,
            m.http_addr,
            if m.is_leader { "*" } else { "" }
        );
    }
}

fn print_workers(workers: &[WorkerView]) {
    println!(
        "{:<18} {:<22} {:<10} {:<9} {:<10} {:<24} {:<8} {:>9} {:>6}",
        "WORKER", "NODE", "ROLE", "STATE", "PENDING", "MODEL", "DEVICE", "KV_BLOCKS", "LEASES"
    );
    for w in workers {
        let node = if w.node_status == "up" {
            w.node_addr.clone()
        } else {
            format!("{} ({})", w.node_addr, w.node_status)
        };
        println!(
            "{:<18} {:<22} {:<10} {:<9} {:<10} {:<24} {:<8} {:>9} {:>6}",
            w.id,
            node,
            w.role,
            w.state,
            w.pending_role.as_deref().unwrap_or("-"),
            w.model,
            w.device,
            w.kv_blocks_total,
            w.leases_held
        );
    }
}

fn print_leases(leases: &[LeaseView], now_ms: u64) {
    println!(
        "{:<40} {:<18} {:>5} {:<14} {:>8}",
        "REQUEST", "OWNER", "EPOCH", "FRONTEND", "AGE_S"
    );
    for l in leases {
        let age_s = now_ms.saturating_sub(l.granted_at_ms) as f64 / 1000.0;
        println!(
            "{:<40} {:<18} {:>5} {:<14} {:>8.1}",
            l.request_id, l.owner, l.epoch, l.frontend, age_s
        );
    }
}
