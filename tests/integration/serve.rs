//! `charrnn serve` (issue 17), started on a free loopback port and spoken to over plain HTTP/1.1: every
//! endpoint against the CLI's own answers, streaming, many clients at once (the batch path), a full
//! queue, every bad request, and a clean stop.
use crate::cli::Env;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::OnceLock;

/// A server process, killed when dropped.
struct Server {
    child: Child,
    address: String,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// One trained model for every test here (training is the slow part): (environment, model folder).
fn trained() -> &'static (Env, String) {
    static MODEL: OnceLock<(Env, String)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let env = Env::new();
        let r = env.train(&["--epochs", "30", "--out", "m"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        (env, "m".to_string())
    })
}

/// Starts `charrnn serve` on a free port with `extra` flags and waits for its "serving" line.
fn start(extra: &[&str]) -> Server {
    let (env, model) = trained();
    let mut child = env
        .command(&[&["serve", "--model", model, "--port", "0"][..], extra].concat())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let address = line.split("http://").nth(1).and_then(|a| a.split_whitespace().next()).map(str::to_string);
    let address = address.unwrap_or_else(|| panic!("no address in {line:?}"));
    assert!(address.starts_with("127.0.0.1:"), "loopback by default: {line}");
    Server { child, address, stderr }
}

/// Sends one request (`Connection: close`) and reads the whole answer, undoing chunked encoding.
fn http(address: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    read_answer(send(address, method, path, headers, body), &mut |_| {})
}

/// Opens a connection to `address` and sends one request (`Connection: close`).
fn send(address: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += &format!("Content-Length: {}\r\n\r\n", body.len());
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream
}

/// Reads the whole answer from `stream`, undoing chunked encoding; `seen` is shown the bytes read so far
/// each time more arrive.
fn read_answer(mut stream: TcpStream, seen: &mut dyn FnMut(&[u8])) -> Answer {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        seen(&raw);
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut rest = &raw[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    Answer { status, headers: head, body: String::from_utf8(body).unwrap() }
}

/// Posts a streamed generation request and reads its answer, calling `started` once, as soon as its first
/// character has arrived (the request runs then).
fn post_streamed(address: &str, body: &str, started: impl FnOnce()) -> Answer {
    let stream = send(address, "POST", "/v1/generate", &[("Content-Type", "application/json")], body.as_bytes());
    let mut started = Some(started);
    read_answer(stream, &mut |raw| {
        if raw.windows(11).any(|w| w == b"event: char") {
            if let Some(started) = started.take() {
                started();
            }
        }
    })
}

fn post(address: &str, body: &str) -> Answer {
    http(address, "POST", "/v1/generate", &[("Content-Type", "application/json")], body.as_bytes())
}

/// Whether a short greedy request is answered in full: 200, three characters, not interrupted.
fn answers_in_full(address: &str) -> bool {
    let answer = post(address, r#"{"prefix": "不知", "num_chars": 3}"#);
    answer.status == 200 && answer.json()["interrupted"] == false && generated(&answer)[0].chars().count() == 3
}

/// `GET /healthz`'s counters.
fn health(address: &str) -> serde_json::Value {
    let answer = http(address, "GET", "/healthz", &[], b"");
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.json()
}

/// Polls `GET /healthz` until `done` holds of it, and returns it. A poll refused with 503 because the
/// connection cap is full is polled again: a connection that just finished may hold its place until the
/// server has closed it.
fn health_until(address: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    health_until_counting(address, done).0
}

/// [`health_until`], also returning how many polls the connection cap refused (the server counts them).
fn health_until_counting(address: &str, done: impl Fn(&serde_json::Value) -> bool) -> (serde_json::Value, u64) {
    let deadline = std::time::Instant::now() + crate::cli::TIMEOUT;
    let mut refused = 0;
    loop {
        let answer = http(address, "GET", "/healthz", &[], b"");
        let full = answer.status == 503 && answer.body.contains("too many open connections");
        assert!(answer.status == 200 || full, "{answer:?}");
        refused += u64::from(full);
        let h = if full { serde_json::Value::Null } else { answer.json() };
        if !full && done(&h) {
            return (h, refused);
        }
        assert!(std::time::Instant::now() < deadline, "healthz never got there: {h}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether the server answered 503 on `stream`, on which nothing was sent, within `wait`.
fn answered_503_within(mut stream: &TcpStream, wait: std::time::Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    &head[..got] == b"HTTP/1.1 503"
}

/// Reads from `stream` until the server closes it; returns what came and how long after `start` it closed.
fn until_closed(mut stream: TcpStream, start: std::time::Instant) -> (Vec<u8>, std::time::Duration) {
    stream.set_read_timeout(Some(crate::cli::TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, start.elapsed()),
            Err(e) => panic!("the server kept the connection open ({e}) after {:?}", start.elapsed()),
        }
    }
}

/// The `generated` texts of a generation answer.
fn generated(answer: &Answer) -> Vec<String> {
    assert_eq!(answer.status, 200, "{answer:?}");
    let samples = answer.json()["samples"].as_array().unwrap().clone();
    samples.iter().map(|s| s["generated"].as_str().unwrap().to_string()).collect()
}

/// What `charrnn predict --json` generates with these flags, one text per sample or beam.
fn predicted(flags: &[&str]) -> Vec<String> {
    let (env, model) = trained();
    let mut args = vec!["predict", "--model", model.as_str(), "--json"];
    args.extend_from_slice(flags);
    let r = env.run(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["generated"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_endpoint_answers_as_the_command_line_does() {
    let server = start(&[]);
    let a = &server.address;
    let health = http(a, "GET", "/healthz", &[], b"");
    assert_eq!((health.status, &health.json()["status"]), (200, &serde_json::json!("ok")));

    let (env, model) = trained();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path(model).join("model.json")).unwrap()).unwrap();
    let described = http(a, "GET", "/v1/model", &[], b"").json();
    assert_eq!(described["vocab_size"], file["model"]["vocab_size"]);
    assert_eq!(described["hidden"], file["model"]["hidden"]);
    assert_eq!(described["epochs"], file["epoch"]);
    // The limits a client must keep to, each the flag's default (README, `charrnn serve --help`).
    let limits = &described["limits"];
    let expected = serde_json::json!({
        "max_chars": 10_000, "max_samples": 16, "max_beam": 16, "max_body": 65_536, "queue": 64, "max_batch": 64,
        "max_connections": 256, "header_timeout_s": 10.0, "body_timeout_s": 10.0, "grace_s": 10.0,
    });
    assert_eq!(limits, &expected);
    assert!(answers_in_full(a));

    let page = http(a, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page.headers.to_ascii_lowercase().contains("content-type: text/html"), "{}", page.headers);
    assert!(page.body.contains("<textarea") && page.body.contains("id=\"generate\""));
    // Offline: the page loads nothing from elsewhere.
    assert!(!page.body.contains("http://") && !page.body.contains("https://") && !page.body.contains("src="));

    // Greedy, sampled (two samples, one batch) and beam search: what predict gives.
    let greedy = post(a, r#"{"prefix": "不知", "num_chars": 20}"#);
    assert_eq!(generated(&greedy), predicted(&["--prefix", "不知", "--num-chars", "20"]));
    let sampled = post(a, r#"{"prefix": "我", "num_chars": 25, "temperature": 0.9, "seed": 3, "samples": 2}"#);
    let expected =
        predicted(&["--prefix", "我", "--num-chars", "25", "--temperature", "0.9", "--seed", "3", "--samples", "2"]);
    assert_eq!(generated(&sampled), expected);
    let beams = post(a, r#"{"prefix": "后知", "num_chars": 6, "beam": 3}"#);
    assert_eq!(generated(&beams), predicted(&["--prefix", "后知", "--num-chars", "6", "--beam", "3"]));
    let lps: Vec<f64> =
        beams.json()["samples"].as_array().unwrap().iter().map(|s| s["log_prob"].as_f64().unwrap()).collect();
    assert!(lps.windows(2).all(|w| w[0] >= w[1]), "{lps:?}");
    // A stop string, with probabilities.
    let stopped = post(a, r#"{"prefix": "分开", "num_chars": 200, "stop": "我", "probs": true}"#).json();
    let s = &stopped["samples"][0];
    assert!(s["generated"].as_str().unwrap().ends_with('我') && s["stopped"] == true, "{stopped}");
    assert_eq!(s["probs"].as_array().unwrap().len(), s["generated"].as_str().unwrap().chars().count());
}

#[test]
fn a_stream_sends_each_character_then_the_whole_answer() {
    let server = start(&[]);
    let body = r#"{"prefix": "不知", "num_chars": 30, "temperature": 1, "seed": 5, "stream": true}"#;
    let streamed = post(&server.address, body);
    assert_eq!(streamed.status, 200);
    assert!(streamed.headers.to_ascii_lowercase().contains("content-type: text/event-stream"), "{}", streamed.headers);
    let mut chars = String::new();
    let mut done = None;
    for block in streamed.body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let event = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("message");
        let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        let data: serde_json::Value = serde_json::from_str(&data).unwrap();
        match event {
            "char" => chars.push_str(data["char"].as_str().unwrap()),
            "done" => done = Some(data),
            other => panic!("event {other}: {data}"),
        }
    }
    let done = done.expect("a done event");
    assert_eq!(chars.chars().count(), 30);
    assert_eq!(done["samples"][0]["generated"].as_str().unwrap(), chars);
    // The same request unstreamed, and asked for through the Accept header instead.
    let plain = post(&server.address, &body.replace(r#", "stream": true"#, ""));
    assert_eq!(generated(&plain), vec![chars.clone()]);
    let accept = [("Content-Type", "application/json"), ("Accept", "text/event-stream")];
    let by_header = http(&server.address, "POST", "/v1/generate", &accept, plain_body(body).as_bytes());
    assert!(by_header.body.contains("event: done"), "{by_header:?}");
}

fn plain_body(body: &str) -> String {
    body.replace(r#", "stream": true"#, "")
}

#[test]
fn clients_at_once_are_all_answered_and_generated_in_batches() {
    let server = start(&[]);
    let prefixes = ["分开", "不知", "我", "后知", "你", "秋"];
    let requests: Vec<String> = (0..24)
        .map(|i| format!(r#"{{"prefix": "{}", "num_chars": {}}}"#, prefixes[i % prefixes.len()], 100 + 7 * i))
        .collect();
    let address = server.address.clone();
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = requests.iter().map(|r| s.spawn(|| post(&address, r))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let batches: Vec<u64> = answers.iter().map(|a| a.json()["batch"].as_u64().unwrap()).collect();
    assert!(batches.iter().any(|&b| b > 1), "some requests must share a batch: {batches:?}");
    // Greedy answers do not depend on the company they were generated in: each alone gives the same.
    for (request, answer) in requests.iter().zip(&answers) {
        assert_eq!(generated(answer), generated(&post(&address, request)), "{request}");
    }
    let health = http(&address, "GET", "/healthz", &[], b"").json();
    assert!(health["largest_batch"].as_u64().unwrap() > 1 && health["requests"].as_u64().unwrap() >= 48, "{health}");
}

#[test]
fn a_request_joins_a_running_batch_and_is_answered_before_it_ends() {
    let server = start(&["--max-chars", "100000"]);
    let address = server.address.clone();
    let long_done = std::sync::atomic::AtomicBool::new(false);
    let (started, running) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        // About two seconds of generation, streamed, so that its first character says it runs.
        let long = s.spawn(|| {
            let body = r#"{"prefix": "分开", "num_chars": 60000, "stream": true}"#;
            let answer = post_streamed(&address, body, || started.send(()).unwrap());
            long_done.store(true, std::sync::atomic::Ordering::SeqCst);
            answer
        });
        running.recv().unwrap();
        let short = post(&address, r#"{"prefix": "不知", "num_chars": 20}"#);
        assert!(!long_done.load(std::sync::atomic::Ordering::SeqCst), "the short request waited for the long one");
        assert_eq!(short.json()["batch"], 2, "{}", short.body);
        assert_eq!(generated(&short), predicted(&["--prefix", "不知", "--num-chars", "20"]));
        let long = long.join().unwrap();
        assert_eq!(long.status, 200);
        assert!(long.body.contains("event: done"), "the long request finished");
    });
}

#[test]
fn a_full_queue_is_answered_503_with_retry_after() {
    let server = start(&["--queue", "1", "--max-batch", "1"]);
    let address = server.address.clone();
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let body = r#"{"prefix": "分开", "num_chars": 10000}"#;
        let handles: Vec<_> = (0..12).map(|_| s.spawn(|| post(&address, body))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(
        !busy.is_empty() && answers.iter().any(|a| a.status == 200),
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 503));
    for a in busy {
        assert!(a.headers.to_ascii_lowercase().contains("retry-after: 1"), "{}", a.headers);
        assert!(a.json()["error"].as_str().unwrap().contains("busy"));
    }
}

#[test]
fn bad_requests_get_a_4xx_naming_the_field_and_the_server_keeps_serving() {
    let server = start(&["--max-chars", "500", "--max-samples", "4"]);
    let a = &server.address;
    let cases: [(&str, u16, Option<&str>); 16] = [
        ("{not json", 400, None),
        ("[1, 2]", 400, None),
        (r#"{"prefix": "分开", "bogus": 1}"#, 400, Some("bogus")),
        (r#"{"num_chars": 5}"#, 400, Some("prefix")),
        (r#"{"prefix": ""}"#, 400, Some("prefix")),
        (r#"{"prefix": "分开Z"}"#, 400, Some("prefix")),
        (r#"{"prefix": "分开", "num_chars": 501}"#, 400, Some("num_chars")),
        (r#"{"prefix": "分开", "num_chars": -1}"#, 400, Some("num_chars")),
        (r#"{"prefix": "分开", "num_chars": "ten"}"#, 400, Some("num_chars")),
        (r#"{"prefix": "分开", "samples": 5}"#, 400, Some("samples")),
        (r#"{"prefix": "分开", "samples": 0}"#, 400, Some("samples")),
        (r#"{"prefix": "分开", "beam": 2, "temperature": 1}"#, 400, Some("beam")),
        (r#"{"prefix": "分开", "beam": 5}"#, 400, Some("beam")),
        (r#"{"prefix": "分开", "top_k": 3, "temperature": 0}"#, 400, Some("top_k")),
        (r#"{"prefix": "分开", "temperature": -1}"#, 400, Some("temperature")),
        (r#"{"prefix": "分开", "stop": "Z"}"#, 400, Some("stop")),
    ];
    for (body, status, field) in cases {
        let answer = post(a, body);
        assert_eq!(answer.status, status, "{body}: {answer:?}");
        let json = answer.json();
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}: {json}");
        assert_eq!(json["field"].as_str(), field, "{body}: {json}");
        // In the user's words, not serde's ("invalid type: string, expected usize").
        assert!(!json["error"].as_str().unwrap().contains("expected"), "{body}: {json}");
    }
    let wrong = post(a, r#"{"prefix": "分开", "num_chars": "ten"}"#).json();
    assert_eq!(wrong["error"], r#"num_chars must be a whole number, 0 or more, not "ten""#);
    // A body over the limit (64 KiB): 413, in JSON too.
    let big = format!(r#"{{"prefix": "{}"}}"#, "分".repeat(30_000));
    let answer = post(a, &big);
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.json()["error"].as_str().unwrap().contains("too large"));
    // Unknown paths and methods get 404 and 405; the server still generates.
    assert_eq!(http(a, "GET", "/etc/passwd", &[], b"").status, 404);
    assert_eq!(http(a, "GET", "/v1/generate", &[], b"").status, 405);
    assert_eq!(generated(&post(a, r#"{"prefix": "分开", "num_chars": 3}"#)).len(), 1);
}

#[test]
fn sigterm_or_sigint_lets_a_running_request_finish_then_stops() {
    for signal in ["TERM", "INT"] {
        let mut server = start(&["--grace", "30", "--max-chars", "100000"]);
        let address = server.address.clone();
        // About two seconds of generation, which runs once its first character has arrived.
        let (started, running) = std::sync::mpsc::channel();
        let body = r#"{"prefix": "分开", "num_chars": 60000, "stream": true}"#;
        let long = std::thread::spawn(move || post_streamed(&address, body, || started.send(()).unwrap()));
        running.recv().unwrap();
        crate::checkpoints::signal(&server.child, signal);
        let answer = long.join().unwrap();
        assert_eq!(answer.status, 200);
        let tail = &answer.body[answer.body.len().saturating_sub(300)..];
        assert!(answer.body.contains("event: done"), "{signal}: the running request finished: {tail}");
        assert!(answer.body.contains(r#""interrupted":false"#), "{signal}: finished within the grace: {tail}");
        let status = crate::cli::wait_within(&mut server.child, crate::cli::TIMEOUT);
        assert_eq!(status.code(), Some(0), "{signal}: a clean stop");
        let mut rest = String::new();
        server.stderr.read_to_string(&mut rest).unwrap();
        assert!(rest.contains("stopped") && !rest.contains("panicked"), "{signal}: {rest}");
        assert!(TcpStream::connect(&server.address).is_err(), "{signal}: nothing listens after the stop");
    }
}

#[test]
fn a_server_that_cannot_start_says_why_in_one_line() {
    let server = start(&[]);
    let (env, model) = trained();
    let port = server.address.split(':').nth(1).unwrap();
    env.fails(&["serve", "--model", model, "--port", port], "invalid --port: cannot listen on 127.0.0.1");
    env.fails(&["serve", "--model", model, "--host", "192.0.2.1", "--port", "0"], "invalid --host");
    env.fails(&["serve", "--model", "nowhere"], "nowhere");
    let usage = env.run(&["serve", "--model", model, "--max-samples", "0"]);
    assert_eq!(usage.code, 2, "{}", usage.stderr);
}

#[test]
fn silent_idle_and_half_sent_connections_are_closed_after_their_timeouts() {
    let server = start(&["--header-timeout", "1", "--body-timeout", "1.5s"]);
    let a = &server.address;
    let second = std::time::Duration::from_secs(1);
    // One that sends nothing, and one that stops inside its headers: closed at the header timeout, unanswered.
    let start = std::time::Instant::now();
    let silent = TcpStream::connect(a).unwrap();
    let mut half_head = TcpStream::connect(a).unwrap();
    half_head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    for (name, stream) in [("silent", silent), ("half a head", half_head)] {
        let (got, after) = until_closed(stream, start);
        // Not before the timeout, and long before the default's 10 s (so the flag was taken).
        assert!(got.is_empty() && after >= second * 9 / 10 && after < second * 8, "{name}: {got:?} after {after:?}");
    }
    // Half a body: 408 in JSON naming the flag, at the body timeout, and the connection closed.
    let body = r#"{"prefix": "分开", "num_chars": 3}"#.as_bytes();
    let start = std::time::Instant::now();
    let mut half_body = TcpStream::connect(a).unwrap();
    let head = format!("POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    half_body.write_all(head.as_bytes()).unwrap();
    half_body.write_all(&body[..10]).unwrap();
    let (got, after) = until_closed(half_body, start);
    let got = String::from_utf8(got).unwrap();
    assert!(got.starts_with("HTTP/1.1 408") && got.contains("--body-timeout"), "{got}");
    assert!(after >= second * 14 / 10 && after < second * 8, "answered after {after:?}, not at the body timeout");
    // A keep-alive connection left idle after its answer: closed at the header timeout.
    let mut kept = TcpStream::connect(a).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 15];
    kept.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK");
    let (rest, after) = until_closed(kept, std::time::Instant::now());
    assert!(String::from_utf8(rest).unwrap().contains(r#""status":"ok""#));
    assert!(after >= second * 9 / 10 && after < second * 8, "closed after {after:?}");
    // The server has served none of them and still answers.
    assert_eq!(health(a)["requests"], 0);
    assert!(answers_in_full(a));
}

#[test]
fn connections_over_the_cap_are_refused_while_a_request_still_succeeds() {
    let server = start(&["--max-connections", "4", "--header-timeout", "5min"]);
    let a = &server.address;
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(a).unwrap()).collect();
    // The fourth place: a request is answered.
    assert!(answers_in_full(a));
    // Once that connection is gone (healthz sees the three idle ones and itself), a fourth idle one fills
    // the cap: the connection after it, accepted after it, is refused in JSON with Retry-After.
    let (h, polls_refused) = health_until_counting(a, |h| h["connections"] == 4);
    let fourth = TcpStream::connect(a).unwrap();
    let refused = post(a, r#"{"prefix": "分开", "num_chars": 3}"#);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.headers.to_ascii_lowercase().contains("retry-after: 1"), "{}", refused.headers);
    assert!(refused.json()["error"].as_str().unwrap().contains("too many open connections"), "{}", refused.body);
    // The fourth itself was refused if the server had not yet let the last poll's connection go (seen in
    // a loaded test run): its 503 is then waiting to be read.
    let fourth_refused = answered_503_within(&fourth, std::time::Duration::from_secs(1));
    drop((idle, fourth));
    let (after, polls_refused_after) = health_until_counting(a, |h| h["connections"] == 1);
    let ours = 1 + u64::from(fourth_refused) + polls_refused + polls_refused_after;
    assert_eq!(after["refused_connections"], ours, "{after}");
    assert_eq!(after["requests"], h["requests"], "the refused request was never read");
    assert!(answers_in_full(a));
}

#[test]
fn a_client_that_goes_away_stops_its_generation_at_the_next_step() {
    let server = start(&["--max-chars", "100000"]);
    let a = &server.address;
    // Each would run for minutes (a beam search of 100,000 characters far longer).
    let bodies = [
        r#"{"prefix": "分开", "num_chars": 100000, "samples": 3, "temperature": 1}"#,
        r#"{"prefix": "分开", "num_chars": 100000, "stream": true}"#,
        r#"{"prefix": "分开", "num_chars": 100000, "beam": 16}"#,
        r#"{"prefix": "分开", "num_chars": 100000, "beam": 16, "stream": true}"#,
    ];
    for (i, body) in bodies.iter().enumerate() {
        let client = send(a, "POST", "/v1/generate", &[("Content-Type", "application/json")], body.as_bytes());
        let running = health_until(a, |h| h["running"] == 1);
        drop(client);
        let after = health_until(a, |h| h["running"] == 0);
        assert_eq!(after["abandoned"], i + 1, "{body}: {after}");
        let steps = after["steps"].as_u64().unwrap() - running["steps"].as_u64().unwrap();
        assert!(steps < 100_000, "{body}: ran {steps} steps, all it asked for");
    }
    assert_eq!(health(a)["interrupted"], 0);
}

#[test]
fn a_beam_search_is_stopped_at_shutdown_once_the_grace_has_passed() {
    let mut server = start(&["--grace", "1", "--max-chars", "100000"]);
    let address = server.address.clone();
    let body = r#"{"prefix": "分开", "num_chars": 100000, "beam": 16}"#;
    let client = std::thread::spawn(move || post(&address, body));
    health_until(&server.address, |h| h["running"] == 1);
    let signalled = std::time::Instant::now();
    crate::checkpoints::signal(&server.child, "TERM");
    let answer = client.join().unwrap();
    let status = crate::cli::wait_within(&mut server.child, crate::cli::TIMEOUT);
    assert!(signalled.elapsed() >= std::time::Duration::from_secs(1), "the grace was kept");
    assert_eq!(status.code(), Some(0));
    // It is answered with the beams so far, marked as cut short.
    let json = answer.json();
    assert_eq!(json["interrupted"], true, "{}", &answer.body[..answer.body.len().min(300)]);
    let beams = json["samples"].as_array().unwrap();
    assert!(!beams.is_empty() && beams.iter().all(|b| b["generated"].as_str().unwrap().chars().count() < 100_000));
    let lps: Vec<f64> = beams.iter().map(|b| b["log_prob"].as_f64().unwrap()).collect();
    assert!(lps.windows(2).all(|w| w[0] >= w[1]), "most likely first: {lps:?}");
}
