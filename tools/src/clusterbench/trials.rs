//! Kill-and-recover trials: leader failover (both systems) and follower failure detection
//! (stator's leader marks the dead peer `down`).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::future::select_all;

use super::load::{key_for, value_for, DEFAULT_KEY_SPACE};
use super::stator_cluster::StatorCluster;
use super::target::Cluster;

pub struct TrialSettings {
    /// Each write attempt after the kill gives up after this long and is retried.
    pub attempt_timeout: Duration,
    /// A trial that sees no recovery within this long counts as failed.
    pub give_up_after: Duration,
    /// How long a restarted member may take to be serving again.
    pub settle_timeout: Duration,
}

/// SIGKILL the leader; time until a write through a survivor is acknowledged.
pub async fn failover_trial(
    cluster: &mut Cluster,
    trial: u64,
    settings: &TrialSettings,
) -> Result<Option<f64>> {
    let leader = cluster.leader(settings.settle_timeout).await?;
    let client = cluster.client();
    let survivors: Vec<usize> = (0..client.member_count())
        .filter(|&m| m != leader)
        .collect();
    // Connections to the survivors are open before the kill, so the clock measures the cluster.
    for &member in &survivors {
        let key = key_for(trial, DEFAULT_KEY_SPACE);
        if let Err(e) = client
            .put(member, &key, &value_for(trial), Duration::from_secs(5))
            .await
        {
            bail!("write through member {member} failed before the kill: {e}");
        }
    }
    let killed_at = cluster.sigkill(leader)?;
    // Wall-clock time of the kill, to line the trial up with the peers' log timestamps.
    tracing::info!(
        trial,
        member = leader,
        killed_unix_us = unix_micros(),
        "{}: leader killed",
        cluster.kind().name()
    );
    let writers = survivors.iter().map(|&member| {
        let client = client.clone();
        Box::pin(async move {
            let mut sequence = trial << 20;
            loop {
                sequence += 1;
                let attempt = Instant::now();
                match client
                    .put(
                        member,
                        &key_for(sequence, DEFAULT_KEY_SPACE),
                        &value_for(sequence),
                        settings.attempt_timeout,
                    )
                    .await
                {
                    Ok(()) => return Instant::now(),
                    Err(_) if attempt.elapsed() < Duration::from_millis(1) => {
                        tokio::time::sleep(Duration::from_millis(1)).await
                    }
                    Err(_) => {}
                }
            }
        })
    });
    let recovered = tokio::time::timeout(settings.give_up_after, select_all(writers)).await;
    let elapsed = recovered.ok().map(|(at, member, _)| {
        let ms = at.duration_since(killed_at).as_secs_f64() * 1e3;
        tracing::info!(
            trial,
            through = survivors[member],
            ms,
            "first write acknowledged"
        );
        ms
    });
    if elapsed.is_none() {
        tracing::warn!(
            trial,
            "{}: no write acknowledged within {:?}",
            cluster.kind().name(),
            settings.give_up_after
        );
    }
    cluster
        .restart_and_settle(leader, settings.settle_timeout)
        .await?;
    Ok(elapsed)
}

fn unix_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// SIGKILL a follower; time until the leader's applied state shows it `down`, polled every
/// `poll_every`.
pub async fn detection_trial(
    cluster: &mut StatorCluster,
    trial: u64,
    poll_every: Duration,
    settings: &TrialSettings,
) -> Result<Option<f64>> {
    let Some(leader) = cluster.leader().await else {
        bail!("no stator leader before detection trial {trial}");
    };
    let followers: Vec<usize> = (0..cluster.client().peer_count())
        .filter(|&p| p != leader)
        .collect();
    let victim = followers[trial as usize % followers.len()];
    let victim_id = cluster.node_id(victim);
    let client = cluster.client();
    let killed_at = cluster.sigkill(victim)?;
    let deadline = killed_at + settings.give_up_after;
    let mut detected = None;
    while Instant::now() < deadline {
        if let Ok(statuses) = client.member_statuses(leader).await {
            if statuses
                .iter()
                .any(|(id, status)| *id == victim_id && status == "down")
            {
                detected = Some(killed_at.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        tokio::time::sleep(poll_every).await;
    }
    if detected.is_none() {
        tracing::warn!(
            trial,
            "stator: follower not marked down within {:?}",
            settings.give_up_after
        );
    }
    cluster.restart(victim).await?;
    cluster.wait_all_up(settings.settle_timeout).await?;
    Ok(detected)
}
