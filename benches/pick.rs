//! The cost of a pick and of an outcome (issue 8): each balancing algorithm called directly over
//! 3, 30 and 300 backends; the same pick asked of a running pool actor, by one caller and by 16
//! at once, both as a ractor call and as the proxy asks (queued, one message per batch); and the
//! per-outcome update of the breaker and the peak EWMA. With more than one worker thread, a
//! connection's first try is answered by its worker's shard of the pool instead: that pick,
//! asked on a worker thread by one caller and by 16 at once, is the `shard` group.
//!
//! `cargo bench --bench pick`. Nothing here opens a connection: the pool's backends are never
//! dialled (a pick only hands out a lease), and its probes are an hour away.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fulcrum::config::{Algorithm, CircuitBreaker, Config};
use fulcrum::policy::balance::{for_algorithm, Candidate, Explore};
use fulcrum::policy::breaker::Breaker;
use fulcrum::policy::ewma::PeakEwma;
use fulcrum::pool::{Pool, PoolArgs, PoolMsg};
use fulcrum::telemetry::metrics::Metrics;
use fulcrum::workers::Workers;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::hint::black_box;
use std::time::Duration;
use tokio::time::Instant;

const SIZES: [usize; 3] = [3, 30, 300];

const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::Adaptive,
    Algorithm::P2cEwma,
    Algorithm::RoundRobin,
    Algorithm::WeightedRoundRobin,
    Algorithm::LeastConnections,
    Algorithm::Random,
    Algorithm::ConsistentHash,
];

/// `n` candidates with spread weights, loads and latencies.
fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            id: i as u64,
            weight: 1.0 + (i % 4) as f64,
            inflight: (i % 7) as u32,
            latency: 0.001 * (1 + i % 5) as f64,
            ramping: false,
            explore: Explore::No,
        })
        .collect()
}

fn algorithms(c: &mut Criterion) {
    let mut group = c.benchmark_group("algorithm");
    group.throughput(Throughput::Elements(1));
    for alg in ALGORITHMS {
        for n in SIZES {
            let cands = candidates(n);
            let mut balancer = for_algorithm(alg);
            let mut rng = SmallRng::seed_from_u64(1);
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(alg.name(), n), &cands, |b, cands| {
                b.iter(|| {
                    key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    black_box(balancer.pick(black_box(cands), key, &mut rng))
                })
            });
        }
    }
    group.finish();
}

/// A config of one upstream over `n` loopback backends nobody dials.
fn pool_config(n: usize, algorithm: Algorithm) -> Config {
    let mut text = format!(
        "[[upstreams]]\nname = \"bench\"\nalgorithm = \"{}\"\n",
        algorithm.name()
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[upstreams.backends]]\naddress = \"127.0.0.1:{}\"\n",
            20_000 + i
        ));
    }
    text.push_str("[upstreams.health]\nkind = \"tcp\"\ninterval = \"1h\"\n");
    match Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    }
}

/// A pool over `n` backends on this runtime, with a shard on each of `workers`.
async fn spawn_pool(n: usize, algorithm: Algorithm, workers: &[tokio::runtime::Handle]) -> Pool {
    let config = pool_config(n, algorithm);
    let args = PoolArgs {
        upstream: config.upstreams[0].clone(),
        seed: Some(7),
        metrics: Metrics::new(),
        drain: Duration::from_secs(1),
    };
    Pool::spawn_on(args, workers).await.expect("pool starts")
}

/// How a pick reaches the actor.
#[derive(Clone, Copy)]
enum Way {
    /// A ractor call of [`PoolMsg::Pick`]: one message per pick.
    Call,
    /// The proxy's way, [`Pool::ask`]: queued, one message per batch.
    Queued,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Call => "call",
            Way::Queued => "queued",
        }
    }
}

/// One pick through the pool actor; the lease is dropped at once, as a finished request's is.
async fn pick(pool: &Pool, way: Way, key: u64) {
    let answer = match way {
        Way::Call => match pool
            .actor()
            .call(
                |reply| PoolMsg::Pick {
                    key,
                    exclude: Vec::new(),
                    retry: None,
                    now: Instant::now(),
                    reply,
                },
                Some(Duration::from_secs(1)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(answer)) => Some(answer),
            _ => None,
        },
        Way::Queued => match pool.ask(key, &[], None, Instant::now()) {
            Some(answer) => answer.await,
            None => None,
        },
    };
    match answer {
        Some(Ok(lease)) => drop(black_box(lease)),
        other => panic!("pick failed: {other:?}"),
    }
}

fn pool_actor(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("pool_actor");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let pool = rt.block_on(spawn_pool(n, Algorithm::Adaptive, &[]));
        for way in [Way::Call, Way::Queued] {
            group.bench_function(
                BenchmarkId::new(format!("one_caller_{}", way.name()), n),
                |b| {
                    let mut key = 0u64;
                    b.to_async(&rt).iter(|| {
                        key = key.wrapping_add(1);
                        pick(&pool, way, key)
                    })
                },
            );
            // 16 callers at once: the time per pick when the actor's mailbox is contended.
            group.bench_function(
                BenchmarkId::new(format!("16_callers_{}", way.name()), n),
                |b| b.iter_custom(|iters| timed_picks(&rt, rt.handle(), &pool, way, 16, iters)),
            );
        }
        pool.actor().stop(None);
    }
    group.finish();
}

/// `callers` tasks on `on` asking `iters` picks of `pool` between them, `way`; the time per pick.
fn timed_picks(
    rt: &tokio::runtime::Runtime,
    on: &tokio::runtime::Handle,
    pool: &Pool,
    way: Way,
    callers: u64,
    iters: u64,
) -> Duration {
    let per = iters.div_ceil(callers).max(1);
    let pool = pool.clone();
    let inner = on.clone();
    // Awaited through `rt`, which keeps the pool actor running meanwhile when `on` is another
    // runtime.
    let elapsed = rt.block_on(on.spawn(async move {
        let started = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|t| {
                let pool = pool.clone();
                inner.spawn(async move {
                    for k in 0..per {
                        pick(&pool, way, t * per + k).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("caller");
        }
        started.elapsed()
    }));
    // Per pick, as `iters` asked: the callers ran `callers × per` of them.
    elapsed
        .expect("callers")
        .mul_f64(iters as f64 / (callers * per) as f64)
}

fn shard(c: &mut Criterion) {
    // As `fulcrum run` with `runtime.worker_threads = 2`: the main thread's current-thread
    // runtime runs the pool actor, and each worker thread a shard.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let workers = rt
        .block_on(async { Workers::start(2) })
        .expect("worker threads");
    let worker = workers.serving()[0].clone();
    let mut group = c.benchmark_group("shard");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let pool = rt.block_on(spawn_pool(n, Algorithm::Adaptive, workers.serving()));
        group.bench_function(BenchmarkId::new("one_caller", n), |b| {
            b.iter_custom(|iters| timed_picks(&rt, &worker, &pool, Way::Queued, 1, iters))
        });
        group.bench_function(BenchmarkId::new("16_callers", n), |b| {
            b.iter_custom(|iters| timed_picks(&rt, &worker, &pool, Way::Queued, 16, iters))
        });
        pool.actor().stop(None);
    }
    group.finish();
}

fn outcome(c: &mut Criterion) {
    let mut group = c.benchmark_group("outcome");
    group.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let mut breaker = Breaker::new(&CircuitBreaker::default(), t0);
    let mut ewma = PeakEwma::new(Duration::from_millis(5), Duration::from_secs(10), t0);
    let mut i = 0u64;
    group.bench_function("breaker_and_ewma", |b| {
        b.iter(|| {
            i += 1;
            let now = t0 + Duration::from_micros(i * 50);
            // A success mostly, now and then a failure that never trips five in a row.
            let failed = i.is_multiple_of(10);
            black_box(breaker.record(failed, now));
            ewma.observe(Duration::from_micros(1000 + i % 500), now);
            black_box(ewma.get())
        })
    });
    group.finish();
}

criterion_group!(benches, algorithms, pool_actor, shard, outcome);
criterion_main!(benches);
