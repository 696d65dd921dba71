//! The crash harness: `airlock serve` killed with SIGKILL at random points
//! while runs go on, fifty times, and started again each time; once with
//! its records in sled, once in PostgreSQL; and two servers sharing a
//! PostgreSQL database and an artifact directory, one of them killed at
//! random a hundred times while the other goes on, takes over the killed
//! one's runs when their leases expire, and the killed one comes back;
//! and two servers with three agents, artifacts in an S3 bucket, a
//! hundred kills spread over the five processes (a killed agent's step
//! runs again on another once its lease expires).
//!
//! The pipeline has four parallel steps, a join, a publish, a deploy to
//! an HTTP receiver on loopback that honours idempotency keys, and a
//! deploy to a directory. Runs are submitted with idempotency keys; a
//! submission whose answer was lost to a kill is sent again to the next
//! server. Afterwards:
//! - every acknowledged submission is exactly one run, and every run ended:
//!   succeeded, or failed with a reason;
//! - no step recorded succeeded ran again (its history ends there);
//! - each deployment was applied at most once (the receiver by its key,
//!   the directory by its release), and every deploy step recorded
//!   succeeded was applied;
//! - every publish step recorded succeeded left its build in the target;
//! - every digest in the artifact index is in the artifact store and
//!   hashes to itself.
//!
//! `AIRLOCK_CRASH_SEED=N` repeats a sequence of kill times.

use crate::server::{gate_pipeline, tick};
use crate::support::{
    Scratch, Server, airlock, approval_code, call, http, output, submit_run, user_token, wait_for_end,
};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KILLS: usize = 50;
const CANARY: &str = "canary-crash-deploy-key-51c0";

/// Requests a receiver got, by idempotency key: (requests, applied).
type Seen = Arc<Mutex<HashMap<String, (u32, u32)>>>;

/// An HTTP deploy target that applies each idempotency key once (a key
/// seen before is answered, not applied again) and takes its time, so
/// that kills land while it works.
fn receiver() -> (String, Seen) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("receiver");
    let url = format!("http://{}/deploy", server.server_addr().to_ip().expect("ip"));
    let seen: Seen = Arc::default();
    let counts = seen.clone();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let counts = counts.clone();
            // One thread a request: a request left over from a killed
            // engine does not hold up the next engine's.
            std::thread::spawn(move || {
                let key = req.headers().iter().find(|h| h.field.equiv("idempotency-key")).map(|h| h.value.to_string());
                let first = {
                    let mut counts = counts.lock().expect("lock");
                    let entry = counts.entry(key.unwrap_or_default()).or_default();
                    entry.0 += 1;
                    entry.1 = 1;
                    entry.0 == 1
                };
                std::thread::sleep(Duration::from_millis(150));
                let status = if first { 201 } else { 200 };
                let _ = req.respond(tiny_http::Response::from_string("deployed").with_status_code(status));
            });
        }
    });
    (url, seen)
}

#[test]
fn runs_survive_fifty_sigkills_of_the_server() {
    harness(None, 1, 0, KILLS);
}

/// The same fifty kills with the records in PostgreSQL: each server
/// takes back the runs the killed one held.
#[test]
fn runs_survive_fifty_sigkills_of_a_server_on_postgresql() {
    let pg = airlock_store::testing::TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    harness(Some(&url), 1, 0, KILLS);
    let everything = pg.dump(&url).expect("the database's records");
    assert!(memchr::memmem::find(&everything, CANARY.as_bytes()).is_none(), "the database holds the credential");
}

/// Two servers on one PostgreSQL database, a hundred kills between them.
#[test]
fn runs_survive_a_hundred_sigkills_among_two_servers_on_postgresql() {
    let pg = airlock_store::testing::TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    harness(Some(&url), 2, 0, 2 * KILLS);
    let everything = pg.dump(&url).expect("the database's records");
    assert!(memchr::memmem::find(&everything, CANARY.as_bytes()).is_none(), "the database holds the credential");
}

/// Two servers and three agents on one PostgreSQL database, artifacts in
/// an S3 bucket, a hundred kills spread over the five.
#[test]
fn runs_survive_a_hundred_sigkills_among_two_servers_and_three_agents() {
    let pg = airlock_store::testing::TestPostgres::start().expect("a PostgreSQL server");
    let url = pg.database().expect("a database");
    harness(Some(&url), 2, 3, 2 * KILLS);
    let everything = pg.dump(&url).expect("the database's records");
    assert!(memchr::memmem::find(&everything, CANARY.as_bytes()).is_none(), "the database holds the credential");
}

/// Kills one of `servers` servers (or of `agents` agents) `kills` times
/// while runs go on (see the module's documentation), with their records
/// in `database` (which several servers need) or else in the state
/// directory, and checks what they left. With agents, the four parallel
/// steps run on them, and artifacts are kept in an S3 bucket.
fn harness(database: Option<&str>, servers: usize, agents: usize, kills: usize) {
    let seed = std::env::var("AIRLOCK_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash harness seed: {seed} (AIRLOCK_CRASH_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = Scratch::new();
    let user = user_token(s.path());
    let pool = user_token(s.path());
    let (deploy_url, deployed) = receiver();
    let s3 = (agents > 0).then(crate::objects::TestS3::start);
    let pool_yaml = match agents {
        0 => String::new(),
        _ => format!("agents:\n  crash:\n    token_sha256: {}\n    labels: [crash]\n", pool.digest),
    };
    let policy = s.file(
        "policy.yaml",
        format!(
            "users:\n  rue: {{ token_sha256: {}, roles: [runner] }}\n\
             targets:\n  snaps: {{ dir: published }}\n\
             environments:\n  prod:\n    provider: {{ type: http, url: '{deploy_url}', auth: bearer, credential: key, idempotent: true }}\n    \
             credentials: {{ key: {{ env: CRASH_DEPLOY_KEY, expires: '2099-01-01' }} }}\n    pipelines: [crash]\n  \
             www:\n    provider: {{ type: directory, path: www, keep: 1000 }}\n    pipelines: [crash]\n{pool_yaml}",
            user.digest
        ),
    );
    let tick = tick();
    let mut yaml = String::from("name: crash\nsteps:\n");
    // On agents, every run's steps run there: none is taken from the
    // step cache.
    let remote = if agents > 0 { "    runs_on: [crash]\n    cache: false\n" } else { "" };
    for i in 1..=4 {
        yaml.push_str(&format!(
            "  a{i}:\n    uses: {tick}\n{remote}    args: [\"3\", \"30\", out-{i}.txt]\n    outputs: [out-{i}.txt]\n"
        ));
    }
    yaml.push_str(&format!(
        "  join:\n    uses: {tick}\n    needs: [a1, a2, a3, a4]\n    inputs: [a1, a2, a3, a4]\n    \
         args: [\"2\", \"30\", joined.txt]\n    outputs: [joined.txt]\n  \
         publish:\n    needs: [join]\n    publish: {{ target: snaps, build: \"b-${{{{ run.id }}}}\", from: [join] }}\n  \
         deploy:\n    needs: [publish]\n    deploy: {{ environment: prod, from: [join] }}\n  \
         www:\n    needs: [deploy]\n    deploy: {{ environment: www, from: [join] }}\n"
    ));
    s.file("pipes/crash.yaml", yaml);
    let pipes = s.path().join("pipes");
    // Each server a state directory of its own; with several, they share
    // one artifact directory, and their leases are short so that the
    // survivors take a killed server's runs over soon.
    let states: Vec<std::path::PathBuf> = (0..servers).map(|i| s.path().join(format!("state-{i}"))).collect();
    let artifacts_dir = if servers > 1 { s.path().join("artifacts") } else { states[0].join("artifacts") };
    let artifacts_arg = match &s3 {
        Some(_) => "s3://airlock/ci".to_owned(),
        None => artifacts_dir.to_string_lossy().into_owned(),
    };
    let shared: Vec<&str> = if servers > 1 { vec!["--lease", "1s", "--artifacts", &artifacts_arg] } else { Vec::new() };
    let s3_env = s3.as_ref().map(crate::objects::TestS3::env).unwrap_or_default();
    let mut env = vec![("CRASH_DEPLOY_KEY", CANARY)];
    env.extend(s3_env.iter().map(|(k, v)| (*k, v.as_str())));
    if let Some(url) = database {
        env.push(("AIRLOCK_DATABASE_URL", url));
    }
    // Each server comes back on its address, which the agents know.
    let addresses: Vec<String> = (0..servers)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr").to_string())
        .collect();
    let bases: Vec<String> = addresses.iter().map(|a| format!("http://{a}")).collect();
    let bases: Vec<&str> = bases.iter().map(String::as_str).collect();
    let agent = http();
    let submit = |url: &str, key: &str| -> Option<String> {
        let answer = call(
            &agent,
            "POST",
            &format!("{url}/api/v1/runs"),
            Some(&user.token),
            Some(json!({"pipeline": "crash.yaml"})),
            &[("idempotency-key", key)],
        );
        match answer {
            Ok((200 | 201, body)) => Some(body["run"]["id"].as_str().expect("id").to_owned()),
            Ok((status, body)) => panic!("submission refused: {status} {body}"),
            // The server died under the request: the key goes again later.
            Err(_) => None,
        }
    };

    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut unanswered: Vec<String> = Vec::new();
    let start = |i: usize| Server::start_on(&addresses[i], &states[i], &policy, &pipes, &env, &shared);
    let start_agent = |i: usize| {
        crate::agents::Agent::start_with(
            &s.path().join(format!("agent-{i}")),
            &bases,
            &pool.token,
            &format!("agent-{i}"),
            &["crash"],
        )
    };
    let mut running: Vec<Option<Server>> = (0..servers).map(|_| None).collect();
    let mut working: Vec<Option<crate::agents::Agent>> = (0..agents).map(|_| None).collect();
    // What the agents said of their jobs.
    let mut agent_lines: Vec<String> = Vec::new();
    let mut agent_kills = 0;
    // Runs one server took over from another whose lease expired.
    let mut taken_over = 0;
    let mut count_takeovers = |server: &Server| {
        taken_over += server.stderr.try_iter().filter(|l| l.contains("was taken over from an engine")).count();
    };
    for round in 0..kills {
        // A server killed comes back, at once, or (when another is up)
        // maybe only next round, after its leases expired; then one, at
        // random, is killed while the others go on.
        let down = running.iter().filter(|s| s.is_none()).count();
        for (i, server) in running.iter_mut().enumerate() {
            if server.is_none() && (down == servers || rng.random_bool(0.5)) {
                *server = Some(start(i));
            }
        }
        let idle = working.iter().filter(|a| a.is_none()).count();
        for (i, agent) in working.iter_mut().enumerate() {
            if agent.is_none() && (idle == agents || rng.random_bool(0.5)) {
                *agent = Some(start_agent(i));
            }
        }
        let urls: Vec<String> = running.iter().flatten().map(|s| s.url.clone()).collect();
        unanswered.push(format!("key-{round}"));
        let started = Instant::now();
        let kill_after = Duration::from_millis(rng.random_range(0..700));
        for key in std::mem::take(&mut unanswered) {
            // Any server takes a submission: they share the queue.
            match submit(&urls[rng.random_range(0..urls.len())], &key) {
                Some(id) => {
                    if let Some(before) = acked.insert(key.clone(), id.clone()) {
                        assert_eq!(before, id, "key {key} answered two different runs");
                    }
                }
                None => unanswered.push(key),
            }
        }
        std::thread::sleep(kill_after.saturating_sub(started.elapsed()));
        // The victim: any process that is up, server or agent.
        let up: Vec<usize> = (0..servers).filter(|i| running[*i].is_some()).collect();
        let busy: Vec<usize> = (0..agents).filter(|i| working[*i].is_some()).collect();
        let pick = rng.random_range(0..up.len() + busy.len());
        if pick >= up.len() {
            if let Some(mut victim) = working[busy[pick - up.len()]].take() {
                victim.kill();
                agent_kills += 1;
                agent_lines.extend(victim.lines.try_iter());
            }
        } else if let Some(mut victim) = running[up[pick]].take() {
            victim.kill();
            count_takeovers(&victim);
        }
    }

    // The last start: everything left goes on to its end.
    for (i, server) in running.iter_mut().enumerate() {
        if server.is_none() {
            *server = Some(start(i));
        }
    }
    for (i, agent) in working.iter_mut().enumerate() {
        if agent.is_none() {
            *agent = Some(start_agent(i));
        }
    }
    let mut running: Vec<Server> = running.into_iter().flatten().collect();
    let server = running.remove(0);
    for key in std::mem::take(&mut unanswered) {
        let id = submit(&server.url, &key).expect("the last server answers");
        acked.insert(key, id);
    }
    assert_eq!(acked.len(), kills);
    let deadline = Instant::now() + Duration::from_secs(300);
    let runs = loop {
        let (status, list) =
            call(&agent, "GET", &format!("{}/api/v1/runs?limit=1000", server.url), Some(&user.token), None, &[])
                .expect("runs");
        assert_eq!(status, 200);
        let runs = list["runs"].as_array().expect("runs").clone();
        if runs.iter().all(|r| !["queued", "running"].contains(&r["state"].as_str().expect("state"))) {
            break runs;
        }
        assert!(Instant::now() < deadline, "runs did not end: {list}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut server = server;
    server.stop();
    count_takeovers(&server);
    for server in &mut running {
        server.stop();
        count_takeovers(server);
    }
    for mut agent in working.into_iter().flatten() {
        agent.kill();
        agent_lines.extend(agent.lines.try_iter());
    }
    let on_agents = agent_lines.iter().filter(|l| l.ends_with("completed (succeeded)")).count();
    let dropped = agent_lines.iter().filter(|l| l.contains("drops the job") || l.contains("was refused")).count();
    let state = &states[0];

    // One run per key, no more.
    let mut ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().expect("id")).collect();
    ids.sort();
    let mut expected: Vec<&str> = acked.values().map(String::as_str).collect();
    expected.sort();
    assert_eq!(ids, expected, "runs on the server are not the acknowledged submissions");

    let deployed = deployed.lock().expect("lock").clone();
    let (mut succeeded, mut resumed) = (0, 0);
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    let mut resent = 0;
    for id in &ids {
        let mut show = airlock(state);
        if let Some(url) = database {
            show.env("AIRLOCK_DATABASE_URL", url);
        }
        let (code, shown, stderr) = output(show.args(["show", id, "--json"]));
        assert_eq!(code, 0, "{stderr}");
        let shown: Value = serde_json::from_str(&shown).expect("json");
        let run = &shown["run"];
        match run["state"].as_str().expect("state") {
            "succeeded" => succeeded += 1,
            "failed" => {
                let reason = run["reason"].as_str().unwrap_or_default();
                assert!(!reason.is_empty(), "{shown}");
                let failed = shown["steps"].as_array().expect("steps").iter().find(|s| s["state"] == "failed");
                let why = failed.and_then(|s| s["reason"].as_str()).unwrap_or(reason);
                *failures.entry(why.replace(id, "RUN")).or_default() += 1;
            }
            other => panic!("run {id} ended {other}: {shown}"),
        }
        let events = shown["events"].as_array().expect("events");
        if events.iter().any(|e| e["step"].is_null() && e["detail"].as_str().is_some_and(|d| d.starts_with("resumed")))
        {
            resumed += 1;
        }
        // A step's history ends where it succeeded.
        for step in shown["steps"].as_array().expect("steps") {
            let name = step["name"].as_str().expect("name");
            let history: Vec<&Value> = events.iter().filter(|e| e["step"] == name).collect();
            if let Some(at) = history.iter().position(|e| e["state"] == "succeeded") {
                assert_eq!(at + 1, history.len(), "step {name} of run {id} went on after it succeeded: {history:?}");
                assert_eq!(step["state"], "succeeded");
            }
        }
        let step = |name: &str| shown["steps"].as_array().expect("steps").iter().find(|s| s["name"] == name).cloned();
        let (requests, applied) = deployed.get(&format!("{id}/deploy")).copied().unwrap_or((0, 0));
        resent += requests.saturating_sub(1);
        if step("deploy").expect("deploy")["state"] == "succeeded" {
            assert_eq!(applied, 1, "run {id} recorded a deployment the receiver never got");
        }
        let releases: Vec<String> = std::fs::read_dir(s.path().join("www/releases"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let made = releases.iter().filter(|r| r.ends_with(&format!("-{id}-www"))).count();
        assert!(made <= 1, "run {id} made {made} releases");
        if step("www").expect("www")["state"] == "succeeded" {
            assert_eq!(made, 1, "run {id} recorded a release that is not there");
        }
        if step("publish").expect("publish")["state"] == "succeeded" {
            assert!(s.path().join(format!("published/builds/b-{id}.json")).is_file(), "run {id}: publish lost");
        }
    }
    eprintln!(
        "{kills} kills ({agent_kills} of agents) of {servers} servers and {agents} agents: {succeeded} runs succeeded, {resumed} were resumed \
         after a kill ({taken_over} by another server), {resent} deployments were sent again with their key, \
         {on_agents} steps completed on agents, {dropped} agent jobs were dropped or refused late; failures: {failures:#?}"
    );
    // Every provider here may be sent a deployment again, so nothing a kill
    // interrupts has to fail: a failed run is a bug.
    assert!(failures.is_empty(), "{} of {kills} runs failed", kills - succeeded);
    assert!(resumed >= 5, "only {resumed} runs were resumed: the kills did not land while runs ran");
    if servers > 1 {
        assert!(taken_over >= 3, "only {taken_over} runs were taken over by another server");
    }
    if agents > 0 {
        // Four steps a run ran on agents, at least once each.
        assert!(on_agents >= 4 * kills, "only {on_agents} steps completed on agents");
        assert!(agent_kills >= kills / 5, "only {agent_kills} of {kills} kills were of agents");
    }

    // Every digest the index knows is in the artifact store, intact.
    let store = match database {
        Some(url) => airlock_store::Store::open_postgres(url).expect("store"),
        None => airlock_store::Store::open(state).expect("store"),
    };
    let cache = tempfile::tempdir().expect("tempdir");
    let artifacts = match &s3 {
        // Read back from the bucket, through an empty cache.
        Some(s3) => s3.store(cache.path()),
        None => airlock_host::ArtifactStore::new(artifacts_dir.clone()),
    };
    let indexed = store.artifacts().expect("index");
    assert!(!indexed.is_empty());
    for (sha, record) in indexed {
        artifacts.verify(&sha).unwrap_or_else(|e| panic!("indexed artifact {sha} ({} bytes): {e}", record.size));
    }
    // And the credential went to the receiver only.
    for file in crate::support::files_below(s.path()) {
        if !file.is_file() {
            continue;
        }
        let bytes = std::fs::read(&file).expect("read");
        assert!(memchr::memmem::find(&bytes, CANARY.as_bytes()).is_none(), "{} holds the credential", file.display());
    }
}

/// A deployment to a provider that cannot tell a second try from a new
/// deployment (a command) is never sent again: killed while the provider
/// works, the run fails on restart, saying why, and the command ran once.
#[test]
fn a_deploy_cut_off_by_a_kill_is_not_sent_again_unless_its_provider_is_idempotent() {
    let s = Scratch::new();
    let user = user_token(s.path());
    let log = s.path().join("deployed.log");
    let policy = s.file(
        "policy.yaml",
        format!(
            "users:\n  rue: {{ token_sha256: {}, roles: [runner] }}\n\
             environments:\n  ops:\n    provider: {{ type: command, argv: [/bin/sh, -c, 'echo \"$AIRLOCK_IDEMPOTENCY_KEY\" >> {}; /bin/sleep 3'], timeout: 30s }}\n    pipelines: [once]\n",
            user.digest,
            log.display()
        ),
    );
    s.file(
        "pipes/once.yaml",
        format!(
            "name: once\nsteps:\n  a:\n    uses: {}\n    args: [\"1\", \"1\", out.txt]\n    outputs: [out.txt]\n  \
             ship:\n    needs: [a]\n    deploy: {{ environment: ops, from: [a] }}\n",
            tick()
        ),
    );
    let (state, pipes) = (s.state(), s.path().join("pipes"));
    let agent = http();
    let mut server = Server::start(&state, &policy, &pipes, &[]);
    let id = submit_run(&agent, &server.url, &user.token, "once.yaml");
    // Kill once the provider has the deployment.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, detail) =
            call(&agent, "GET", &format!("{}/api/v1/runs/{id}", server.url), Some(&user.token), None, &[])
                .expect("get");
        let ship = detail["steps"].as_array().expect("steps").iter().find(|s| s["name"] == "ship").cloned();
        // The provider has written its line (a file just created may be
        // empty still).
        let written = std::fs::read_to_string(&log).is_ok_and(|t| t.ends_with('\n'));
        if ship.is_some_and(|s| s["effect_started_ms"].is_u64()) && written {
            break;
        }
        assert!(Instant::now() < deadline, "the deploy never started: {detail}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();

    let server = Server::start(&state, &policy, &pipes, &[]);
    // The server may say it resumes the run after it says where it
    // listens: its lines are waited for, not only those already read.
    let mut said = server.before.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !said.iter().any(|l| l.contains(&id) && l.contains("goes on")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.stderr.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => panic!("the server did not say it resumed the run: {said:?}"),
        }
    }
    let detail = wait_for_end(&agent, &server.url, &user.token, &id);
    assert_eq!(detail["run"]["state"], "failed", "{detail}");
    let ship = detail["steps"].as_array().expect("steps").iter().find(|s| s["name"] == "ship").cloned().expect("ship");
    assert!(ship["reason"].as_str().expect("reason").contains("it may have happened, so it is not repeated"), "{ship}");
    let a = detail["steps"].as_array().expect("steps").iter().find(|s| s["name"] == "a").cloned().expect("a");
    assert_eq!(a["attempts"], 1, "a step that had succeeded ran again: {a}");
    assert_eq!(std::fs::read_to_string(&log).expect("log"), format!("{id}/ship\n"), "the command ran again");
}

/// A step waiting for approval when its server is killed asks again on
/// the next start, with a new code: the old code (shown by a process that
/// is gone) no longer decides anything, the new one does.
#[test]
fn an_approval_cut_off_by_a_kill_asks_again_with_a_new_code() {
    let s = Scratch::new();
    let (alice, bob) = (user_token(s.path()), user_token(s.path()));
    let policy = s.file(
        "policy.yaml",
        format!(
            "users:\n  alice: {{ token_sha256: {}, roles: [runner] }}\n  bob: {{ token_sha256: {}, roles: [approver] }}\n\
             groups:\n  approvers: [bob]\n\
             environments:\n  www:\n    provider: {{ type: directory, path: www }}\n    pipelines: [gate]\n    \
             approvals: {{ groups: [approvers], timeout: 10m }}\n",
            alice.digest, bob.digest
        ),
    );
    gate_pipeline(&s);
    let (state, pipes) = (s.state(), s.path().join("pipes"));
    let agent = http();
    let mut server = Server::start(&state, &policy, &pipes, &[]);
    let id = submit_run(&agent, &server.url, &alice.token, "gate.yaml");
    let old = approval_code(&agent, &server.url, &alice.token, &id, "ship");
    server.kill();

    let server = Server::start(&state, &policy, &pipes, &[]);
    let new = approval_code(&agent, &server.url, &alice.token, &id, "ship");
    assert_ne!(old, new, "the resumed request kept the code of a process that is gone");
    let decide = |code: &str| {
        call(
            &agent,
            "POST",
            &format!("{}/api/v1/runs/{id}/approvals/ship", server.url),
            Some(&bob.token),
            Some(json!({"code": code, "approve": true})),
            &[],
        )
        .expect("decide")
    };
    let (status, body) = decide(&old);
    assert_eq!((status, &body["error"]["code"]), (422, &json!("wrong_code")), "{body}");
    let (status, body) = decide(&new);
    assert_eq!(status, 200, "{body}");
    let detail = wait_for_end(&agent, &server.url, &bob.token, &id);
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    let a = detail["steps"].as_array().expect("steps").iter().find(|s| s["name"] == "a").cloned().expect("a");
    assert_eq!(a["attempts"], 1, "a succeeded step ran again: {a}");
}
