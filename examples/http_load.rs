//! A small HTTP load client for `scripts/bench-delivery`: submits N messages
//! of SIZE bytes of text to Herald's `POST /api/v1/messages` over
//! `--sessions` keep-alive connections (one blocking thread each, one request
//! in flight per connection), as `smtp-source` does for Postfix in the same
//! benchmark. Message i goes to `rcpt{i}@sink.test` with subject `bench {i}`.
//!
//! Why not Python: the Python client it replaces spent about 0.3 of a core
//! (json.dumps and http.client under the GIL) where smtp-source spends under
//! 0.06, on a two-core machine shared with the daemon being measured.
//!
//! Usage: `http_load HOST:PORT TOKEN N SIZE [SESSIONS]`. Prints how many were
//! accepted (202) and how fast; exits 1 if any was not.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("http_load: {e}");
        std::process::exit(2);
    }
}

struct Job {
    addr: String,
    token: String,
    n: usize,
    /// The text part, already a JSON string literal.
    text: String,
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(token), Some(n), Some(size)) =
        (args.get(1), args.get(2), args.get(3), args.get(4))
    else {
        return Err("usage: http_load HOST:PORT TOKEN N SIZE [SESSIONS]".into());
    };
    let sessions: usize = args.get(5).map_or(Ok(8), |s| s.parse())?;
    let (n, size): (usize, usize) = (n.parse()?, size.parse()?);
    // The same text as the Python client had: one 76-character line repeated.
    let line: String =
        "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. "
            .repeat(2)
            .chars()
            .take(76)
            .chain(['\n'])
            .collect();
    let text: String = line
        .repeat(size / line.len() + 1)
        .chars()
        .take(size)
        .collect();
    let job = Arc::new(Job {
        addr: addr.clone(),
        token: token.clone(),
        n,
        text: serde_json::to_string(&text)?,
    });
    let next = Arc::new(AtomicUsize::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..sessions)
        .map(|_| {
            let (job, next, taken) = (job.clone(), next.clone(), taken.clone());
            std::thread::spawn(move || session(&job, &next, &taken))
        })
        .collect();
    let mut failures = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(f)) => failures.extend(f),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("a session thread panicked".into()),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let got = taken.load(Ordering::Relaxed);
    println!(
        "http_load: {got} of {n} messages accepted in {secs:.2} s over {sessions} connections: {:.0} msg/s",
        got as f64 / secs
    );
    for f in failures.iter().take(5) {
        println!("http_load: not accepted: {f}");
    }
    if got != n {
        std::process::exit(1);
    }
    Ok(())
}

/// One connection: submits messages until none is left.
fn session(job: &Job, next: &AtomicUsize, taken: &AtomicUsize) -> Res<Vec<String>> {
    let stream = TcpStream::connect(&job.addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut failures = Vec::new();
    let mut req = Vec::with_capacity(job.text.len() + 512);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= job.n {
            break;
        }
        let body = format!(
            r#"{{"sender": "bench", "to": ["rcpt{i}@sink.test"], "subject": "bench {i}", "text": {}}}"#,
            job.text
        );
        req.clear();
        write!(
            req,
            "POST /api/v1/messages HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            job.addr,
            job.token,
            body.len()
        )?;
        req.extend_from_slice(body.as_bytes());
        w.write_all(&req)?;
        let (status, answer) = response(&mut r)?;
        if status == 202 {
            taken.fetch_add(1, Ordering::Relaxed);
        } else {
            failures.push(format!("message {i}: {status} {answer}"));
        }
    }
    Ok(failures)
}

/// Reads one response: its status and body (Content-Length framed, as
/// Herald's answers are).
fn response(r: &mut impl BufRead) -> Res<(u16, String)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err("the server closed the connection".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("malformed status line `{}`", line.trim_end()))?
        .parse()?;
    let mut length = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err("the server closed the connection in the headers".into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
