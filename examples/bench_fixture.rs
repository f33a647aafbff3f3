//! Writes the rendering benchmarks' 20 KB newsletter template (the same
//! `benches/fixture` body) as a template folder, for end-to-end benchmarks
//! through the daemon (`scripts/bench-campaign`).
//!
//! Run: `cargo run --release --example bench_fixture -- DIR SENDER`
//! (writes `DIR/bench/template.toml` and `DIR/bench/body.en.html`).

#[path = "../benches/fixture/mod.rs"]
#[allow(dead_code)]
mod fixture;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(sender)) = (args.next(), args.next()) else {
        eprintln!("usage: bench_fixture DIR SENDER");
        std::process::exit(2);
    };
    let t = std::path::Path::new(&dir).join("bench");
    std::fs::create_dir_all(&t).expect("create the template folder");
    std::fs::write(
        t.join("template.toml"),
        format!(
            "sender = \"{sender}\"\ndefault_language = \"en\"\nkind = \"marketing\"\n[subject]\nen = \"{{{{ contact.first_name }}}}, new this week at {{{{ site.name }}}}\"\n[preheader]\nen = \"Picked for {{{{ contact.city }}}}\"\n"
        ),
    )
    .expect("write template.toml");
    std::fs::write(t.join("body.en.html"), fixture::body()).expect("write the body");
    println!("{}", t.display());
}
