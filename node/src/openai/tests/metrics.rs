use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;

use super::support::{Harness, Script, MODEL};

/// Runs requests with a private Prometheus recorder (current-thread runtime: every task runs on
/// the thread the recorder is installed on) and returns the rendered exposition text.
fn scrape_after(requests: Vec<(&'static str, serde_json::Value)>) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let harness = Harness::new(Script::Reply("four".into()));
            for (path, body) in requests {
                harness.post(path, body).await;
            }
        });
    });
    handle.render()
}

fn line_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn requests_are_counted_by_status_and_timed() {
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]});
    let streamed =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let bad =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "temperature": 9});
    let text = scrape_after(vec![
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", streamed),
        ("/v1/chat/completions", bad),
        ("/v1/completions", json!({"model": MODEL, "prompt": "x"})),
    ]);
    let requests = |endpoint: &str, status: &str| {
        line_value(
            &text,
            &format!(
                "stator_frontend_requests_total{{model=\"{MODEL}\",endpoint=\"{endpoint}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(requests("chat_completions", "200"), Some(2.0), "{text}");
    assert_eq!(requests("chat_completions", "400"), Some(1.0), "{text}");
    assert_eq!(requests("completions", "200"), Some(1.0), "{text}");
    // Every request, streamed or refused, has left the in-flight gauge.
    assert_eq!(
        line_value(
            &text,
            "stator_frontend_inflight{endpoint=\"chat_completions\"}"
        ),
        Some(0.0)
    );
    let count = |name: &str| {
        line_value(
            &text,
            &format!("{name}_count{{endpoint=\"chat_completions\"}}"),
        )
    };
    assert_eq!(
        count("stator_frontend_request_duration_seconds"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        count("stator_frontend_time_to_first_token_seconds"),
        Some(2.0)
    );
    // "four" + EOS: 5 tokens, 4 gaps, per successful chat request.
    assert_eq!(
        count("stator_frontend_inter_token_latency_seconds"),
        Some(8.0)
    );
    assert_eq!(count("stator_frontend_input_tokens"), Some(2.0));
    assert_eq!(
        line_value(
            &text,
            "stator_frontend_output_tokens_sum{endpoint=\"chat_completions\"}"
        ),
        Some(10.0)
    );
}
