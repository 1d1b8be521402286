//! Throughput of the SSE parser and the client's own per-token cost.
//!
//! `cargo bench -p kimi` prints:
//! 1. SSE parse throughput on a realistic Kimi stream, fed in network-sized
//!    and in tiny pieces (target ≥ 100 MB/s);
//! 2. per-token cost from bytes received to chunk delivered: one token's SSE
//!    event fed to the decoder (SSE framing, JSON, think filter) and the chunk
//!    taken out (target ≤ 20 µs);
//! 3. the same end to end through `KimiLlm` and its stream against a local
//!    gateway on loopback — an upper bound that also counts the server, TCP
//!    and hyper.
//!
//! No criterion: a few timed repetitions, best and median printed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use agent::{ChatMessage, JobContext, Llm, LlmChunk, LlmRequest};
use e2e_tests::inference::chat as gateway;
use futures::StreamExt;
use kimi::decode::Decoder;
use kimi::sse::SseParser;
use kimi::{KimiConfig, KimiLlm};

fn token_event(i: usize) -> String {
    // The shape and size of a real Kimi K2 chunk on LiveKit Inference.
    let words = [
        "Hello", " there", ",", " how", " can", " I", " help", " you", " today", "?", " ¿Qué",
        " tal", "?",
    ];
    gateway::content(words[i % words.len()])
}

fn stream_bytes(tokens: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..tokens {
        s.push_str(&token_event(i));
        if i % 500 == 0 {
            s.push_str(": keep-alive\n\n");
        }
    }
    s.push_str(&gateway::finish("stop"));
    s.push_str(&gateway::usage(1000, tokens as u64, 0));
    s.push_str(gateway::DONE);
    s.into_bytes()
}

fn time<F: FnMut()>(reps: usize, mut f: F) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[0], times[reps / 2])
}

fn sse_throughput() {
    let bytes = stream_bytes(40_000);
    let mb = bytes.len() as f64 / 1e6;
    for piece in [16 * 1024, 1024, 64, 7] {
        let (best, median) = time(15, || {
            let mut p = SseParser::new();
            let mut n = 0usize;
            for chunk in bytes.chunks(piece) {
                p.feed(black_box(chunk));
                while let Some(e) = p.next_event() {
                    n += e.data.len();
                }
            }
            p.finish();
            while p.next_event().is_some() {}
            black_box(n);
        });
        println!(
            "sse parse, {:>6}-byte pieces: {:>7.0} MB/s best, {:>7.0} MB/s median ({:.1} MB stream)",
            piece,
            mb / best.as_secs_f64(),
            mb / median.as_secs_f64(),
            mb
        );
    }
}

fn per_token_decode() {
    let tokens = 100_000;
    let events: Vec<Vec<u8>> = (0..tokens).map(|i| token_event(i).into_bytes()).collect();
    for strip in [true, false] {
        let (best, median) = time(9, || {
            let mut d = Decoder::new(strip);
            let mut n = 0usize;
            for e in &events {
                // Bytes received …
                if d.feed(black_box(e)).is_err() {
                    panic!("decode failed");
                }
                // … to chunk delivered.
                while let Some(c) = d.next_chunk() {
                    if let LlmChunk::Text(t) = c {
                        n += t.len();
                    }
                }
            }
            black_box(n);
        });
        println!(
            "decode per token (think filter {}): {:.2} µs best, {:.2} µs median",
            if strip { "on" } else { "off" },
            best.as_secs_f64() * 1e6 / tokens as f64,
            median.as_secs_f64() * 1e6 / tokens as f64
        );
    }
}

fn end_to_end_loopback() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("end to end: no runtime: {e}");
            return;
        }
    };
    rt.block_on(async {
        let tokens = 20_000;
        // One body frame per token, as a model server sends them.
        let steps: Vec<gateway::Step> = (0..tokens)
            .map(|i| gateway::Step::Bytes(token_event(i).into_bytes()))
            .chain([gateway::Step::Bytes(
                [gateway::finish("stop"), gateway::usage(10, 10, 0), gateway::DONE.to_string()]
                    .concat()
                    .into_bytes(),
            )])
            .collect();
        let mut results = Vec::new();
        for _ in 0..5 {
            let gw = gateway::Gateway::start(
                gateway::lk_auth(),
                vec![gateway::Reply::Stream(steps.clone())],
            )
            .await;
            let cfg = KimiConfig {
                base_url: Some(gw.base_url.clone()),
                ..KimiConfig::default()
            };
            let Ok(llm) = KimiLlm::new(&cfg, &gateway::livekit_env) else {
                println!("end to end: client failed");
                return;
            };
            let request = LlmRequest {
                messages: vec![ChatMessage::user("hello")],
                tools: vec![],
                job: JobContext::default(),
                options: Default::default(),
            };
            let Ok(mut stream) = llm.chat(request).await else {
                println!("end to end: request failed");
                return;
            };
            let t = Instant::now();
            let mut n = 0usize;
            while let Some(Ok(chunk)) = stream.next().await {
                if matches!(chunk, LlmChunk::Text(_)) {
                    n += 1;
                }
            }
            let elapsed = t.elapsed();
            assert_eq!(n, tokens);
            results.push(elapsed);
        }
        results.sort();
        println!(
            "end to end over loopback (server + TCP + hyper + client), per token: {:.2} µs best, {:.2} µs median",
            results[0].as_secs_f64() * 1e6 / tokens as f64,
            results[results.len() / 2].as_secs_f64() * 1e6 / tokens as f64
        );
    });
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent; keep it quick then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with `cargo bench -p kimi` for figures");
        return;
    }
    sse_throughput();
    per_token_decode();
    end_to_end_loopback();
}
