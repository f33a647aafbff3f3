//! Order and date triggers of automations through the real binary and
//! smtp-sink: `order_placed` (nth, statuses), `order_status`,
//! `delivery_date`, `order_total`, `registered`, `inactive`, `birthday`,
//! `date_field`, related products, and an old imported order. Events carry
//! past `at` times and dates (the daemon's clock is the real one); each
//! test checks that the right message arrives exactly once, says what it
//! is about, and that neither a duplicate event nor a restart (kill -9 and
//! start) repeats it.

mod common;

use std::time::Duration;

use common::flows::{at, count, events, granted, mail_to, start, status};
use common::peers::Sink;
use common::{Herald, wait_until};
use serde_json::{Value, json};

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// A flow file: the trigger's TOML lines, one step sending template `tpl`
/// labelled `label` (and `extra` step keys).
fn flow(trigger: &str, tpl: &str, label: &str, extra: &str) -> String {
    format!(
        "[trigger]\n{trigger}\n[[steps]]\ntemplate = \"{tpl}\"\ndata = {{ label = \"{label}\" }}\n{extra}\n"
    )
}

/// The UTC date `days` from today, formatted with `fmt` (strftime).
fn date(days: i64, fmt: &str) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days))
        .format(fmt)
        .to_string()
}

/// The UTC date `days` from today, YYYY-MM-DD.
fn day(days: i64) -> String {
    date(days, "%Y-%m-%d")
}

/// An RFC 3339 time (as `at` gives) moved by `days`.
fn plus_days(t: &str, days: i64) -> String {
    let t = chrono::DateTime::parse_from_rfc3339(t).unwrap() + chrono::Duration::days(days);
    t.to_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An order event: `id` is the event's, `secs` its time from now.
fn order(id: &str, email: &str, secs: i64, order_id: &str, status: &str, total: &str) -> Value {
    order_with(id, email, secs, order_id, status, total, json!({}))
}

/// An order event with more keys (`delivery_date`, `items`…).
fn order_with(
    id: &str,
    email: &str,
    secs: i64,
    order_id: &str,
    status: &str,
    total: &str,
    more: Value,
) -> Value {
    let mut o = json!({"type": "order", "id": id, "at": at(secs), "email": email,
        "order_id": order_id, "status": status, "total": total, "currency": "EUR",
        "items": [{"sku": "ITEM-1", "quantity": 1, "price": total}]});
    for (k, v) in more.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

/// A customer event setting these keys.
fn customer(id: &str, email: &str, keys: Value) -> Value {
    let mut c = json!({"type": "customer", "id": id, "at": at(-60), "email": email});
    for (k, v) in keys.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// The messages `rcpt` got from the step labelled `label`.
fn got(sink: &Sink, rcpt: &str, label: &str) -> Vec<String> {
    mail_to(sink, rcpt)
        .into_iter()
        .filter(|m| m.contains(label))
        .collect()
}

/// Waits for the first message labelled `label` to `rcpt` and returns it.
fn arrives(sink: &Sink, rcpt: &str, label: &str) -> String {
    wait_until(
        &format!("{label} to {rcpt}"),
        Duration::from_secs(30),
        || !got(sink, rcpt, label).is_empty(),
    );
    got(sink, rcpt, label).remove(0)
}

/// Gives a wrongly repeated message time to be sent and delivered (the
/// runner looks every 200 ms; smtp-sink answers at once).
fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

/// Exactly one message labelled `label` reached `rcpt`; it is returned.
fn once(sink: &Sink, rcpt: &str, label: &str) -> String {
    let m = got(sink, rcpt, label);
    assert_eq!(m.len(), 1, "{label} to {rcpt}: {m:#?}");
    m.into_iter().next().unwrap()
}

/// Restarts the daemon (kill -9 and start) and lets it run a while.
fn restart(h: &mut Herald) {
    h.restart();
    settle();
}

/// The events again: every one a duplicate.
fn again(h: &Herald, evs: Value) {
    let n = evs.as_array().unwrap().len();
    let r = events(h, evs);
    assert_eq!(r["duplicate"], n, "{r}");
}

#[test]
fn order_placed_fires_on_the_second_counted_order_and_once_on_reaching_paid() {
    let sink = Sink::start(&[]);
    let second = flow("type = \"order_placed\"\nnth = 2", "tx", "lbl-second", "");
    let paid = flow(
        "type = \"order_placed\"\nstatuses = [\"paid\"]",
        "tx",
        "lbl-paid",
        "",
    );
    let mut h = start(&sink, &[("second", &second), ("paid", &paid)], "");
    for who in ["ann", "bob", "cat"] {
        granted(&h, &format!("{who}@example.test"));
    }
    let ann = "ann@example.test";
    // Ann's first and second orders: the second one fires.
    let a2 = order("o-a2", ann, -2 * HOUR, "A-2", "placed", "20.00");
    events(
        &h,
        json!([order("o-a1", ann, -3 * HOUR, "A-1", "placed", "10.00"), a2]),
    );
    let m = arrives(&sink, ann, "lbl-second");
    assert!(m.contains("ORDER A-2"), "{m}");
    // Her third does not.
    events(
        &h,
        json!([order("o-a3", ann, -HOUR, "A-3", "placed", "30.00")]),
    );
    // Cat's second order is cancelled: her third is her second counted one.
    let cat = "cat@example.test";
    events(
        &h,
        json!([
            order("o-c1", cat, -3 * HOUR, "C-1", "placed", "10.00"),
            order("o-c2", cat, -2 * HOUR, "C-2", "cancelled", "10.00"),
        ]),
    );
    events(
        &h,
        json!([order("o-c3", cat, -HOUR, "C-3", "placed", "10.00")]),
    );
    let m = arrives(&sink, cat, "lbl-second");
    assert!(m.contains("ORDER C-3"), "{m}");
    // Bob's order was placed three days ago (a bank transfer) and paid an
    // hour ago: the `paid` flow fires when it reaches `paid`.
    let bob = "bob@example.test";
    events(
        &h,
        json!([order("o-b1", bob, -3 * DAY, "B-1", "placed", "50.00")]),
    );
    let b_paid = order("o-b1-paid", bob, -HOUR, "B-1", "paid", "50.00");
    events(&h, json!([b_paid.clone()]));
    let m = arrives(&sink, bob, "lbl-paid");
    assert!(m.contains("ORDER B-1"), "{m}");
    // Shipped, then paid again: no second message.
    events(
        &h,
        json!([
            order("o-b1-shipped", bob, -40 * 60, "B-1", "shipped", "50.00"),
            order("o-b1-paid2", bob, -30 * 60, "B-1", "paid", "50.00"),
        ]),
    );
    // Duplicates and a restart repeat nothing.
    again(&h, json!([a2, b_paid]));
    restart(&mut h);
    assert!(once(&sink, ann, "lbl-second").contains("ORDER A-2"));
    assert!(once(&sink, cat, "lbl-second").contains("ORDER C-3"));
    assert!(once(&sink, bob, "lbl-paid").contains("ORDER B-1"));
    assert!(got(&sink, ann, "lbl-paid").is_empty());
    assert!(got(&sink, bob, "lbl-second").is_empty());
    let s = status(&h, "second");
    assert_eq!(count(&s, None, "entered"), 2, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 2, "{s}");
    let s = status(&h, "paid");
    assert_eq!(count(&s, None, "entered"), 1, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    assert_eq!(count(&s, Some(0), "missed"), 0, "{s}");
}

#[test]
fn order_status_delivered_fires_once_per_order() {
    let sink = Sink::start(&[]);
    let delivered = flow(
        "type = \"order_status\"\nto = \"delivered\"",
        "tx",
        "lbl-delivered",
        "",
    );
    let mut h = start(&sink, &[("delivered", &delivered)], "");
    let ann = "ann@example.test";
    granted(&h, ann);
    events(
        &h,
        json!([
            order("o-d1", ann, -5 * HOUR, "D-1", "placed", "10.00"),
            order("o-d1-s", ann, -4 * HOUR, "D-1", "shipped", "10.00"),
        ]),
    );
    let d1 = order("o-d1-d", ann, -3 * HOUR, "D-1", "delivered", "10.00");
    events(&h, json!([d1.clone()]));
    let m = arrives(&sink, ann, "lbl-delivered");
    assert!(m.contains("ORDER D-1"), "{m}");
    // Reported delivered again (a later update): nothing more.
    events(
        &h,
        json!([order(
            "o-d1-d2",
            ann,
            -2 * HOUR,
            "D-1",
            "delivered",
            "10.00"
        )]),
    );
    // Another order, placed ten days ago and delivered an hour ago: its own
    // message.
    events(
        &h,
        json!([order("o-d2", ann, -10 * DAY, "D-2", "placed", "20.00")]),
    );
    events(
        &h,
        json!([order("o-d2-d", ann, -HOUR, "D-2", "delivered", "20.00")]),
    );
    wait_until("D-2's message", Duration::from_secs(30), || {
        got(&sink, ann, "lbl-delivered").len() == 2
    });
    again(&h, json!([d1]));
    restart(&mut h);
    let all = got(&sink, ann, "lbl-delivered");
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all.iter().filter(|m| m.contains("ORDER D-1")).count(), 1);
    assert_eq!(all.iter().filter(|m| m.contains("ORDER D-2")).count(), 1);
    let s = status(&h, "delivered");
    assert_eq!(count(&s, None, "entered"), 2, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 2, "{s}");
}

/// A flow step's pending runs and their earliest due time.
fn pending(h: &Herald, flow: &str) -> (u64, String) {
    let s = status(h, flow);
    (
        s["steps"][0]["pending"].as_u64().unwrap_or(0),
        s["steps"][0]["next_due"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn delivery_dates_send_wait_move_with_the_date_and_end_with_a_cancellation() {
    let sink = Sink::start(&[]);
    let before = flow(
        "type = \"delivery_date\"\noffset = \"-2 days\"",
        "tx",
        "lbl-before",
        "",
    );
    let after = flow(
        "type = \"delivery_date\"\noffset = \"+1 day\"",
        "tx",
        "lbl-after",
        "",
    );
    let mut h = start(&sink, &[("before", &before), ("after", &after)], "");
    let [ann, bob, cat, dan] = ["ann", "bob", "cat", "dan"].map(|w| format!("{w}@example.test"));
    for who in [&ann, &bob, &cat, &dan] {
        granted(&h, who);
    }
    let dd = |d: i64| json!({"delivery_date": day(d)});
    // Ann's parcel was due yesterday: "+1 day" is due at today's midnight
    // (sent); "-2 days" was due three days ago (missed).
    let e1 = order_with("o-e1", &ann, -2 * DAY, "E-1", "placed", "10.00", dd(-1));
    // Bob's is due the day after tomorrow: "-2 days" is due today (sent),
    // "+1 day" in three days (pending).
    let e2 = order_with("o-e2", &bob, -HOUR, "E-2", "placed", "10.00", dd(2));
    events(&h, json!([e1.clone(), e2.clone()]));
    assert!(arrives(&sink, &ann, "lbl-after").contains("ORDER E-1"));
    assert!(arrives(&sink, &bob, "lbl-before").contains("ORDER E-2"));
    let s = status(&h, "before");
    assert_eq!(count(&s, Some(0), "missed"), 1, "{s}");
    assert_eq!(pending(&h, "after"), (1, format!("{}T00:00:00Z", day(3))));
    // Cat's is due in ten days: "-2 days" waits for day 8.
    events(
        &h,
        json!([order_with(
            "o-e3",
            &cat,
            -HOUR,
            "E-3",
            "placed",
            "10.00",
            dd(10)
        )]),
    );
    assert_eq!(pending(&h, "before"), (1, format!("{}T00:00:00Z", day(8))));
    // The shop moves it to day 6: the run moves to day 4.
    events(
        &h,
        json!([order_with(
            "o-e3-m",
            &cat,
            -50 * 60,
            "E-3",
            "placed",
            "10.00",
            dd(6)
        )]),
    );
    assert_eq!(pending(&h, "before"), (1, format!("{}T00:00:00Z", day(4))));
    assert_eq!(status(&h, "after")["steps"][0]["pending"], 2);
    // Cancelled: both of its runs end.
    events(
        &h,
        json!([order_with(
            "o-e3-c",
            &cat,
            -40 * 60,
            "E-3",
            "cancelled",
            "10.00",
            dd(6)
        )]),
    );
    assert_eq!(pending(&h, "before"), (0, String::new()));
    let s = status(&h, "before");
    assert_eq!(count(&s, Some(0), "exited.order_cancelled"), 1, "{s}");
    let s = status(&h, "after");
    assert_eq!(count(&s, Some(0), "exited.order_cancelled"), 1, "{s}");
    assert_eq!(s["steps"][0]["pending"], 1, "{s}");
    // Dan's is due in ten days, then moved to the day after tomorrow: the
    // "-2 days" message goes now.
    events(
        &h,
        json!([order_with(
            "o-e4",
            &dan,
            -HOUR,
            "E-4",
            "placed",
            "10.00",
            dd(10)
        )]),
    );
    assert_eq!(pending(&h, "before"), (1, format!("{}T00:00:00Z", day(8))));
    events(
        &h,
        json!([order_with(
            "o-e4-m",
            &dan,
            -50 * 60,
            "E-4",
            "placed",
            "10.00",
            dd(2)
        )]),
    );
    assert!(arrives(&sink, &dan, "lbl-before").contains("ORDER E-4"));
    // Duplicates and a restart repeat nothing.
    again(&h, json!([e1, e2]));
    restart(&mut h);
    assert!(once(&sink, &ann, "lbl-after").contains("ORDER E-1"));
    assert!(once(&sink, &bob, "lbl-before").contains("ORDER E-2"));
    assert!(once(&sink, &dan, "lbl-before").contains("ORDER E-4"));
    assert!(got(&sink, &ann, "lbl-before").is_empty());
    assert!(mail_to(&sink, &cat).is_empty());
    let s = status(&h, "before");
    assert_eq!(count(&s, Some(0), "queued"), 2, "{s}");
    assert_eq!(s["steps"][0]["pending"], 0, "{s}");
    let s = status(&h, "after");
    assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    // Bob's (day 3) and Dan's (day 3) "+1 day" runs wait.
    assert_eq!(pending(&h, "after"), (2, format!("{}T00:00:00Z", day(3))));
}

#[test]
fn order_total_fires_on_a_large_order_and_once_on_the_order_that_crosses_the_lifetime_sum() {
    let sink = Sink::start(&[]);
    let big = flow("type = \"order_total\"\ngte = 140", "tx", "lbl-big", "");
    let loyal = flow(
        "type = \"order_total\"\nlifetime_sum_crosses = \"200.00\"",
        "m",
        "lbl-loyal",
        "",
    );
    let mut h = start(&sink, &[("big", &big), ("loyal", &loyal)], "");
    let (ann, bob) = ("ann@example.test", "bob@example.test");
    granted(&h, ann);
    granted(&h, bob);
    // Ann: 50 is not large, exactly 140 is.
    let t2 = order("o-t2", ann, -2 * HOUR, "T-2", "placed", "140.00");
    events(
        &h,
        json!([order("o-t1", ann, -3 * HOUR, "T-1", "placed", "50.00"), t2]),
    );
    assert!(arrives(&sink, ann, "lbl-big").contains("ORDER T-2"));
    // Bob: 120, then 100 (220: crosses 200), then 100 more (no second).
    events(
        &h,
        json!([order("o-l1", bob, -3 * HOUR, "L-1", "placed", "120.00")]),
    );
    let l2 = order("o-l2", bob, -2 * HOUR, "L-2", "placed", "100.00");
    events(&h, json!([l2.clone()]));
    assert!(arrives(&sink, bob, "lbl-loyal").contains("ORDER L-2"));
    events(
        &h,
        json!([order("o-l3", bob, -HOUR, "L-3", "placed", "100.00")]),
    );
    // L-2 and L-3 cancelled (120 again), and a new order crossing 200
    // again: the threshold was crossed once, and is not celebrated twice.
    events(
        &h,
        json!([
            order("o-l2-c", bob, -50 * 60, "L-2", "cancelled", "100.00"),
            order("o-l3-c", bob, -50 * 60, "L-3", "cancelled", "100.00"),
            order("o-l4", bob, -40 * 60, "L-4", "placed", "100.00"),
        ]),
    );
    again(&h, json!([t2, l2]));
    restart(&mut h);
    assert!(once(&sink, ann, "lbl-big").contains("ORDER T-2"));
    assert!(once(&sink, bob, "lbl-loyal").contains("ORDER L-2"));
    assert!(got(&sink, ann, "lbl-loyal").is_empty());
    assert!(got(&sink, bob, "lbl-big").is_empty());
    for name in ["big", "loyal"] {
        let s = status(&h, name);
        assert_eq!(count(&s, None, "entered"), 1, "{s}");
        assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    }
}

#[test]
fn registered_three_days_ago_without_an_order_is_nudged_once() {
    let sink = Sink::start(&[]);
    let registered = flow(
        "type = \"registered\"\nafter = \"3 days\"\nno_order = true",
        "m",
        "lbl-registered",
        "",
    );
    let mut h = start(&sink, &[("registered", &registered)], "");
    let [ann, bob, cat] = ["ann", "bob", "cat"].map(|w| format!("{w}@example.test"));
    for who in [&ann, &bob, &cat] {
        granted(&h, who);
    }
    // Ann registered three days ago: due at today's midnight, sent.
    let reg_ann = customer("c-ann", &ann, json!({"registered_at": day(-3)}));
    events(&h, json!([reg_ann.clone()]));
    let m = arrives(&sink, &ann, "lbl-registered");
    assert!(m.contains(&format!("For {ann}")), "{m}");
    // Bob registered three days ago and ordered: no nudge.
    events(
        &h,
        json!([
            customer("c-bob", &bob, json!({"registered_at": day(-3)})),
            order("o-bob", &bob, -HOUR, "R-1", "placed", "10.00"),
        ]),
    );
    wait_until("bob's run ends", Duration::from_secs(30), || {
        count(&status(&h, "registered"), Some(0), "exited.ordered") == 1
    });
    // Cat registered yesterday: her nudge waits two days.
    events(
        &h,
        json!([customer("c-cat", &cat, json!({"registered_at": day(-1)}))]),
    );
    assert_eq!(
        pending(&h, "registered"),
        (1, format!("{}T00:00:00Z", day(2)))
    );
    again(&h, json!([reg_ann]));
    // Ann's data changes again: no second nudge.
    events(
        &h,
        json!([customer("c-ann-2", &ann, json!({"first_name": "Ann"}))]),
    );
    restart(&mut h);
    once(&sink, &ann, "lbl-registered");
    assert!(mail_to(&sink, &bob).is_empty());
    assert!(mail_to(&sink, &cat).is_empty());
    let s = status(&h, "registered");
    assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    assert_eq!(count(&s, None, "entered"), 3, "{s}");
    assert_eq!(s["steps"][0]["pending"], 1, "{s}");
}

#[test]
fn inactivity_since_the_last_login_or_order_is_mailed_once_and_rearmed_by_activity() {
    let sink = Sink::start(&[]);
    let login = flow(
        "type = \"inactive\"\nsince = \"login\"\ndays = 60",
        "m",
        "lbl-login",
        "",
    );
    let ordered = flow(
        "type = \"inactive\"\nsince = \"order\"\ndays = 60",
        "m",
        "lbl-order",
        "",
    );
    let mut h = start(&sink, &[("login", &login), ("ordered", &ordered)], "");
    let [ann, bob, cat] = ["ann", "bob", "cat"].map(|w| format!("{w}@example.test"));
    for who in [&ann, &bob, &cat] {
        granted(&h, who);
    }
    let login_at = |id: &str, who: &str, secs: i64| json!({"type": "login", "id": id, "at": at(secs), "email": who});
    // Ann's last login was 60 and a half days ago: 60 days passed half a
    // day ago (within max_late), the message goes.
    let l_ann = login_at("l-ann", &ann, -60 * DAY - 12 * HOUR);
    events(&h, json!([l_ann.clone()]));
    assert!(!arrives(&sink, &ann, "lbl-login").contains("ORDER"));
    // Cat's last order was 60 days ago: due at today's midnight.
    let o_cat = order("o-cat", &cat, -60 * DAY, "I-1", "placed", "10.00");
    events(&h, json!([o_cat.clone()]));
    arrives(&sink, &cat, "lbl-order");
    // Bob logged in 30 days ago: his message waits 30 days.
    let l_bob = login_at("l-bob-1", &bob, -30 * DAY);
    events(&h, json!([l_bob.clone()]));
    let due = plus_days(l_bob["at"].as_str().unwrap(), 60);
    assert_eq!(pending(&h, "login"), (1, due));
    // He logs in again: that run ends, a new one waits 59 days.
    let l_bob = login_at("l-bob-2", &bob, -DAY);
    events(&h, json!([l_bob.clone()]));
    let s = status(&h, "login");
    assert_eq!(count(&s, Some(0), "exited.active_again"), 1, "{s}");
    let due = plus_days(l_bob["at"].as_str().unwrap(), 60);
    assert_eq!(pending(&h, "login"), (1, due));
    // Duplicates and a restart repeat nothing.
    again(&h, json!([l_ann, o_cat]));
    restart(&mut h);
    once(&sink, &ann, "lbl-login");
    once(&sink, &cat, "lbl-order");
    assert!(got(&sink, &ann, "lbl-order").is_empty());
    assert!(got(&sink, &cat, "lbl-login").is_empty());
    assert!(mail_to(&sink, &bob).is_empty());
    let s = status(&h, "login");
    assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    assert_eq!(count(&s, None, "entered"), 3, "{s}");
    let s = status(&h, "ordered");
    assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    assert_eq!(count(&s, None, "entered"), 1, "{s}");
}

#[test]
fn birthdays_and_custom_date_fields_are_mailed_on_the_day_once() {
    let sink = Sink::start(&[]);
    let birthday = flow("type = \"birthday\"", "m", "lbl-birthday", "");
    let yearly = flow(
        "type = \"date_field\"\nfield = \"anniversary\"\nyearly = true",
        "m",
        "lbl-yearly",
        "",
    );
    let renewal = flow(
        "type = \"date_field\"\nfield = \"renewal\"",
        "tx",
        "lbl-renewal",
        "",
    );
    let mut h = start(
        &sink,
        &[
            ("birthday", &birthday),
            ("yearly", &yearly),
            ("renewal", &renewal),
        ],
        "",
    );
    h.field("anniversary", "date");
    h.field("renewal", "date");
    let [ann, bob, cat, dan] = ["ann", "bob", "cat", "dan"].map(|w| format!("{w}@example.test"));
    for who in [&ann, &bob, &cat, &dan] {
        granted(&h, who);
    }
    // 1992 is a leap year: any month/day of today or tomorrow exists.
    let on = |days: i64, year: u32| format!("{year}-{}", date(days, "%m-%d"));
    // Ann was born on this day, and became a customer on this day: both
    // yearly messages go; her renewal date is today: that one too.
    let ann_dates = customer(
        "c-ann",
        &ann,
        json!({"birthday": on(0, 1992), "fields": {"anniversary": on(0, 2020), "renewal": day(0)}}),
    );
    events(&h, json!([ann_dates.clone()]));
    assert!(!arrives(&sink, &ann, "lbl-birthday").contains("ORDER"));
    arrives(&sink, &ann, "lbl-yearly");
    arrives(&sink, &ann, "lbl-renewal");
    // Bob's birthday and anniversary are tomorrow: they wait for tomorrow.
    // His renewal is in five days.
    events(
        &h,
        json!([customer(
            "c-bob",
            &bob,
            json!({"birthday": on(1, 1992), "fields": {"anniversary": on(1, 2020), "renewal": day(5)}}),
        )]),
    );
    // (Ann's next birthday and anniversary, next year, wait too.)
    let tomorrow = format!("{}T00:00:00Z", day(1));
    assert_eq!(pending(&h, "birthday"), (2, tomorrow.clone()));
    assert_eq!(pending(&h, "yearly"), (2, tomorrow));
    assert_eq!(pending(&h, "renewal"), (1, format!("{}T00:00:00Z", day(5))));
    // His renewal moves to day 7: the run moves with it.
    events(
        &h,
        json!([customer(
            "c-bob-2",
            &bob,
            json!({"fields": {"renewal": day(7)}})
        )]),
    );
    assert_eq!(pending(&h, "renewal"), (1, format!("{}T00:00:00Z", day(7))));
    let s = status(&h, "renewal");
    assert_eq!(count(&s, Some(0), "exited.date_changed"), 1, "{s}");
    // Cat's renewal was three years ago (not yearly): never sent.
    events(
        &h,
        json!([customer(
            "c-cat",
            &cat,
            json!({"fields": {"renewal": on(0, 2020)}})
        )]),
    );
    assert_eq!(count(&status(&h, "renewal"), Some(0), "missed"), 1);
    // Dan's anniversary was yesterday: next year's waits.
    events(
        &h,
        json!([customer(
            "c-dan",
            &dan,
            json!({"fields": {"anniversary": on(-1, 2020)}})
        )]),
    );
    assert_eq!(status(&h, "yearly")["steps"][0]["pending"], 3);
    // Duplicates, Ann's data sent again with the same dates, a restart:
    // nothing more.
    again(&h, json!([ann_dates]));
    events(
        &h,
        json!([customer(
            "c-ann-2",
            &ann,
            json!({"birthday": on(0, 1992), "fields": {"anniversary": on(0, 2020), "renewal": day(0)}}),
        )]),
    );
    restart(&mut h);
    once(&sink, &ann, "lbl-birthday");
    once(&sink, &ann, "lbl-yearly");
    once(&sink, &ann, "lbl-renewal");
    for who in [&bob, &cat, &dan] {
        assert!(mail_to(&sink, who).is_empty(), "{who}");
    }
    for name in ["birthday", "yearly", "renewal"] {
        let s = status(&h, name);
        assert_eq!(count(&s, Some(0), "queued"), 1, "{s}");
    }
}

#[test]
fn related_products_after_an_order_and_a_year_old_order_never_mails() {
    let sink = Sink::start(&[]);
    let related = flow(
        "type = \"order_placed\"",
        "tx",
        "lbl-related",
        "products = \"related\"",
    );
    let mut h = start(&sink, &[("related", &related)], "");
    let product = |sku: &str, related: &[&str]| json!({"sku": sku, "name": sku, "price": "10.00", "currency": "EUR", "related": related});
    let r = h.post_json(
        "/api/v1/products",
        json!([
            product("BOOT-1", &["SOCK-1", "LACE-1", "GLOVE-1"]),
            product("SOCK-1", &[]),
            product("LACE-1", &[]),
        ]),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let mut glove = product("GLOVE-1", &[]);
    glove["type"] = "product".into();
    glove["id"] = "p-glove".into();
    glove["at"] = at(-60).into();
    events(&h, json!([glove]));
    let (ann, bob) = ("ann@example.test", "bob@example.test");
    granted(&h, ann);
    granted(&h, bob);
    let items = |skus: &[&str]| json!({"items": skus.iter().map(|s| json!({"sku": s, "quantity": 1, "price": "10.00"})).collect::<Vec<_>>()});
    // Ann buys boots and laces: socks and gloves are related, not bought.
    let r1 = order_with(
        "o-r1",
        ann,
        -2 * HOUR,
        "R-1",
        "placed",
        "20.00",
        items(&["BOOT-1", "LACE-1"]),
    );
    events(&h, json!([r1.clone()]));
    let m = arrives(&sink, ann, "lbl-related");
    assert!(m.contains("ORDER R-1"), "{m}");
    assert!(m.contains("PRODUCTS SOCK-1 GLOVE-1 <"), "{m}");
    assert!(!m.contains("LACE-1"), "{m}");
    // Then socks: only the gloves are left.
    events(
        &h,
        json!([order_with(
            "o-r2",
            ann,
            -HOUR,
            "R-2",
            "placed",
            "10.00",
            items(&["SOCK-1"])
        )]),
    );
    wait_until("R-2's message", Duration::from_secs(30), || {
        got(&sink, ann, "lbl-related").len() == 2
    });
    let m = got(&sink, ann, "lbl-related")
        .into_iter()
        .find(|m| m.contains("ORDER R-2"))
        .unwrap();
    assert!(m.contains("PRODUCTS GLOVE-1 <"), "{m}");
    // Bob's order, imported with its time a year ago: too late, counted
    // missed, never mailed.
    let old = order_with(
        "o-old",
        bob,
        -365 * DAY,
        "OLD-1",
        "placed",
        "10.00",
        items(&["BOOT-1"]),
    );
    events(&h, json!([old.clone()]));
    let s = status(&h, "related");
    assert_eq!(count(&s, Some(0), "missed"), 1, "{s}");
    again(&h, json!([r1, old]));
    restart(&mut h);
    let all = got(&sink, ann, "lbl-related");
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all.iter().filter(|m| m.contains("ORDER R-1")).count(), 1);
    assert!(mail_to(&sink, bob).is_empty());
    let s = status(&h, "related");
    assert_eq!(count(&s, Some(0), "missed"), 1, "{s}");
    assert_eq!(count(&s, Some(0), "queued"), 2, "{s}");
    assert_eq!(count(&s, None, "entered"), 2, "{s}");
    assert_eq!(s["steps"][0]["pending"], 0, "{s}");
}
