//! Behaviour conditions (opened / clicked / not opened a campaign, no open in
//! N days, never opened) through the library: the tracking endpoints that
//! feed them arrive with the tracking issue, so these tests record sends,
//! opens and clicks into the index directly and evaluate real segments.

use std::collections::BTreeMap;

use chrono::{NaiveDate, Utc};
use herald::contacts::model::{ConsentState, Contact};
use herald::segment::{Catalog, Index, lang, parse_document};
use herald::shop::model::day_of_date;

fn contact(id: u64) -> Contact {
    Contact {
        id,
        email: format!("c{id}@example.com"),
        consent: ConsentState::Granted,
        phone: None,
        sms_consent: ConsentState::Unknown,
        language: None,
        site: None,
        fields: BTreeMap::new(),
        lists: Default::default(),
        tags: Default::default(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

fn members(index: &Index, today: NaiveDate, toml: &str) -> Vec<u64> {
    let root = lang::from_toml(toml).expect("toml");
    let seg = parse_document("t", "test", &root, &[]).expect("segment");
    let e = index
        .evaluate(&seg.cond, &Catalog::default(), today)
        .expect("evaluate");
    e.members.iter().collect()
}

#[test]
fn behaviour_conditions_read_sends_opens_and_clicks() {
    let today = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
    let day = day_of_date(today);
    let index = Index::new();
    index.with_data_mut(|d| {
        for id in 1..=5 {
            d.put_contact(&contact(id));
        }
        // Campaign 7 went to 1, 2, 3; 1 opened and clicked, 2 opened 40 days ago.
        for id in [1, 2, 3] {
            d.record_sent(7, id);
        }
        d.record_open(7, 1, day - 2);
        d.record_click(7, 1, day - 2);
        d.record_open(7, 2, day - 40);
        // Campaign 8 went to 4, who opened it 100 days ago.
        d.record_sent(8, 4);
        d.record_open(8, 4, day - 100);
    });
    index.mark_ready();
    assert_eq!(members(&index, today, "opened = 7"), vec![1, 2]);
    assert_eq!(members(&index, today, "clicked = 7"), vec![1]);
    assert_eq!(members(&index, today, "not_opened = 7"), vec![3]);
    assert_eq!(members(&index, today, "opened = 99"), Vec::<u64>::new());
    assert_eq!(
        members(&index, today, "no_open_days = 30"),
        vec![2, 3, 4, 5]
    );
    assert_eq!(members(&index, today, "never_opened = true"), vec![3, 5]);
    assert_eq!(
        members(&index, today, "never_opened = false"),
        vec![1, 2, 4]
    );
    assert_eq!(
        members(
            &index,
            today,
            "field = \"last_open\"\nafter = \"50 days ago\"\n"
        ),
        vec![1, 2]
    );
    assert_eq!(
        members(
            &index,
            today,
            "all = [ { not_opened = 7 }, { field = \"consent\", eq = \"granted\" } ]"
        ),
        vec![3]
    );
}
