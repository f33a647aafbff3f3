//! A small SMTP load client for `scripts/bench-inbound`: sends the messages
//! of a JSON-lines file (`{"from", "to", "data"}` per line; `data` the
//! message without the final dot) over `--sessions` connections, each
//! reusing its connection and pipelining MAIL, RCPT and DATA (RFC 2920),
//! and prints how many the server took (250 after the data) and how fast.
//! The same client measures Herald's inbound listener and Postfix's smtpd,
//! so the comparison is of the servers.
//!
//! Usage: `smtp_load HOST:PORT FILE [SESSIONS]`. Exits 1 if any message was
//! not taken.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(serde::Deserialize)]
struct Msg {
    from: String,
    to: String,
    data: String,
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    if let Err(e) = run() {
        eprintln!("smtp_load: {e}");
        std::process::exit(2);
    }
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(file)) = (args.get(1), args.get(2)) else {
        return Err("usage: smtp_load HOST:PORT FILE [SESSIONS]".into());
    };
    let sessions: usize = args.get(3).map_or(Ok(8), |s| s.parse())?;
    let text = std::fs::read_to_string(file)?;
    let mut msgs = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let m: Msg = serde_json::from_str(line)?;
        msgs.push(prepare(m));
    }
    let msgs = Arc::new(msgs);
    let next = Arc::new(AtomicUsize::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let bytes: usize = msgs.iter().map(|m| m.2.len()).sum();
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..sessions {
        let (msgs, next, taken, addr) = (msgs.clone(), next.clone(), taken.clone(), addr.clone());
        handles.push(std::thread::spawn(move || -> Res<Vec<String>> {
            session(&addr, &msgs, &next, &taken)
        }));
    }
    let mut failures = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(f)) => failures.extend(f),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("a session thread panicked".into()),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let n = taken.load(Ordering::Relaxed);
    println!(
        "smtp_load: {n} of {} messages taken in {secs:.2} s over {sessions} sessions: {:.0} msg/s, {:.1} MB/s",
        msgs.len(),
        n as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    for f in failures.iter().take(5) {
        println!("smtp_load: not taken: {f}");
    }
    if n != msgs.len() {
        std::process::exit(1);
    }
    Ok(())
}

/// (MAIL+RCPT+DATA commands, envelope recipient, dot-stuffed data with the
/// final dot).
fn prepare(m: Msg) -> (String, String, Vec<u8>) {
    let cmds = format!("MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n", m.from, m.to);
    let mut data = Vec::with_capacity(m.data.len() + 64);
    for line in m.data.split_inclusive('\n') {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.starts_with('.') {
            data.push(b'.');
        }
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    (cmds, m.to, data)
}

/// One connection: takes messages until none is left.
fn session(
    addr: &str,
    msgs: &[(String, String, Vec<u8>)],
    next: &AtomicUsize,
    taken: &AtomicUsize,
) -> Res<Vec<String>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    expect(&mut r, 220)?;
    w.write_all(b"EHLO load.test\r\n")?;
    expect(&mut r, 250)?;
    let mut failures = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some((cmds, to, data)) = msgs.get(i) else {
            break;
        };
        w.write_all(cmds.as_bytes())?;
        let mail = reply(&mut r)?;
        let rcpt = reply(&mut r)?;
        let go = reply(&mut r)?;
        if go.0 != 354 {
            failures.push(format!(
                "{to}: MAIL {} RCPT {} DATA {}",
                mail.1, rcpt.1, go.1
            ));
            w.write_all(b"RSET\r\n")?;
            reply(&mut r)?;
            continue;
        }
        w.write_all(data)?;
        let done = reply(&mut r)?;
        if done.0 == 250 {
            taken.fetch_add(1, Ordering::Relaxed);
        } else {
            failures.push(format!("{to}: {}", done.1));
        }
    }
    w.write_all(b"QUIT\r\n")?;
    let _ = reply(&mut r);
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    Ok(failures)
}

/// Reads one (possibly multi-line) reply: its code and last line.
fn reply(r: &mut impl BufRead) -> Res<(u16, String)> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err("the server closed the connection".into());
        }
        if line.len() < 4 {
            return Err(format!("malformed reply `{}`", line.trim_end()).into());
        }
        if line.as_bytes()[3] != b'-' {
            let code = line[..3].parse()?;
            return Ok((code, line.trim_end().to_string()));
        }
    }
}

fn expect(r: &mut impl BufRead, code: u16) -> Res<()> {
    let (c, text) = reply(r)?;
    if c != code {
        return Err(format!("expected {code}, got `{text}`").into());
    }
    Ok(())
}
