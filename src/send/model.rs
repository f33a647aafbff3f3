//! The identity of a send and the names of its counters: pure types every
//! layer below the send layer (store, delivery, tracking) may use without
//! knowing what kind of send produced a message.

use serde::{Deserialize, Serialize};

/// What a send is: the unit reports are kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendKind {
    /// A newsletter campaign.
    Campaign,
    /// An automation (event-triggered mail).
    Automation,
    /// A test send of a campaign to seed addresses (kept out of stats).
    Test,
    /// A template message sent through the API (or by Herald itself, such
    /// as a signup confirmation); its id is the hash of its tag.
    Transactional,
    /// An admin preview: links in it lead nowhere.
    Preview,
}

impl SendKind {
    /// The kind's code in tokens and keys.
    pub fn code(self) -> u8 {
        match self {
            SendKind::Campaign => 1,
            SendKind::Automation => 2,
            SendKind::Test => 3,
            SendKind::Transactional => 4,
            SendKind::Preview => 5,
        }
    }

    /// The kind with this code.
    pub fn from_code(c: u8) -> Option<SendKind> {
        Some(match c {
            1 => SendKind::Campaign,
            2 => SendKind::Automation,
            3 => SendKind::Test,
            4 => SendKind::Transactional,
            5 => SendKind::Preview,
            _ => return None,
        })
    }

    /// The kind's name in URLs (`/api/v1/reports/sends/{kind}/…`).
    pub fn name(self) -> &'static str {
        match self {
            SendKind::Campaign => "campaign",
            SendKind::Automation => "automation",
            SendKind::Test => "test",
            SendKind::Transactional => "transactional",
            SendKind::Preview => "preview",
        }
    }

    /// The kind with this name.
    pub fn from_name(s: &str) -> Option<SendKind> {
        [
            SendKind::Campaign,
            SendKind::Automation,
            SendKind::Test,
            SendKind::Transactional,
            SendKind::Preview,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }

    /// A short letter used in Message-IDs and Feedback-ID.
    pub fn letter(self) -> char {
        match self {
            SendKind::Campaign => 'c',
            SendKind::Automation => 'a',
            SendKind::Test => 't',
            SendKind::Transactional => 'm',
            SendKind::Preview => 'p',
        }
    }
}

/// One send: a campaign stage and A/B variant, an automation step, the
/// transactional messages of one tag on one day, a test.
///
/// `variant` is the send's *slot*: `(round << 16) | variant`, see [`slot`].
/// The round is what one contact gets at most once (a campaign's stage, an
/// automation's step, a transactional tag's day); the low 16 bits tell A/B
/// variants of the same round apart. Counters are kept per slot, the
/// ledger and engagement per round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SendRef {
    /// What kind of send.
    pub kind: SendKind,
    /// Campaign or automation id; for transactional mail the tag's id
    /// ([`tag_id`]).
    pub id: u64,
    /// The packed slot, see [`slot`].
    #[serde(rename = "slot")]
    pub variant: u32,
}

impl SendRef {
    /// The send packed into a fixed-width key for the store's link table.
    pub fn key(&self) -> [u8; 13] {
        let mut k = [0u8; 13];
        k[0] = self.kind.code();
        k[1..9].copy_from_slice(&self.id.to_be_bytes());
        k[9..].copy_from_slice(&self.variant.to_be_bytes());
        k
    }

    /// The round of the slot: what one contact gets at most once.
    pub fn round(&self) -> u32 {
        unslot(self.variant).0
    }

    /// The send with its kind and id only (slot 0): the unit reports and
    /// the segment index group by.
    pub fn whole(&self) -> SendRef {
        SendRef {
            variant: 0,
            ..*self
        }
    }

    /// Whether messages of this send are counted (tests and previews are
    /// not).
    pub fn counted(&self) -> bool {
        !matches!(self.kind, SendKind::Test | SendKind::Preview)
    }
}

/// (round, variant) packed into a slot: round in the high 16 bits, variant
/// in the low 16.
pub fn slot(round: u32, variant: u32) -> u32 {
    (round << 16) | (variant & 0xffff)
}

/// The (round, variant) of a packed slot.
pub fn unslot(s: u32) -> (u32, u32) {
    (s >> 16, s & 0xffff)
}

/// Days since the epoch of a time in ms (the round of a transactional send).
pub fn day_of(ms: i64) -> u32 {
    (ms.max(0) / 86_400_000).min(0xffff) as u32
}

/// The id of a transactional tag: a stable hash of its name (32 bits, so
/// tokens stay short). A template message without a tag is tagged with its
/// template's name, which gives the id template messages always had.
pub fn tag_id(tag: &str) -> u64 {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(tag.as_bytes());
    u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
}

/// The send of transactional messages tagged `tag` queued at `now` (ms).
pub fn transactional(tag: &str, now: i64) -> SendRef {
    SendRef {
        kind: SendKind::Transactional,
        id: tag_id(tag),
        variant: slot(day_of(now), 0),
    }
}

/// Whether `tag` may name transactional messages: 1–64 characters of
/// letters, digits, `-`, `_`, `.` and `:`.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Delivery and engagement counters of a send, per slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Counter {
    /// Recipients delivered.
    Delivered = 1,
    /// Recipients failed (bounced, expired, purged).
    Failed = 2,
    /// Recipients deferred now (waiting for a retry).
    Deferred = 3,
    /// Hard bounces.
    Hard = 4,
    /// Soft bounces.
    Soft = 5,
    /// Policy refusals.
    Policy = 6,
    /// Contacts who opened.
    UniqueOpens = 7,
    /// Contacts who clicked.
    UniqueClicks = 8,
    /// Opens.
    Opens = 9,
    /// Clicks.
    Clicks = 10,
    /// Attributed revenue, in hundredths.
    Revenue = 11,
    /// Attributed orders.
    Orders = 12,
    /// Messages taken out of the queue unsent because the contact lost
    /// consent after they were queued (also counted as failed).
    Unsent = 13,
    /// Contacts whose message was opened by a machine (privacy proxy).
    MachineUniqueOpens = 14,
    /// Opens by machines.
    MachineOpens = 15,
    /// Contacts whose links a machine (link scanner) followed.
    MachineUniqueClicks = 16,
    /// Clicks by machines.
    MachineClicks = 17,
    /// Contacts who unsubscribed through the send's message.
    Unsubscribes = 18,
    /// Spam complaints about the send's message.
    Complaints = 19,
    /// Messages taken out of the queue unsent because the contact was
    /// erased after they were queued (also counted as failed).
    Erased = 20,
    /// Messages queued (counted by the send layer when it queues them).
    Sent = 21,
    /// Bounces reported after the receiving server had taken the message
    /// (DSNs to the VERP return path; also counted as failed and by
    /// class, and taken off delivered).
    LateBounces = 22,
    /// Auto-replies (vacation, out of office) to the send's messages: never
    /// bounces.
    AutoReplies = 23,
    /// Delay notices ("will retry") about the send's messages: never bounces.
    DelayNotices = 24,
    /// Messages taken out of the queue unsent because the address is on
    /// the suppression list (also counted as failed).
    NotSentSuppressed = 25,
    /// Text messages an SMS gateway took.
    Handed = 26,
    /// Text messages that left the SMS queue: handed to the gateway, or
    /// failed before (refused, out of attempts, not sent).
    Dequeued = 27,
    /// SMS parts billed (a long or UCS-2 text is several).
    SmsParts = 28,
    /// What the parts cost, in ten-thousandths of the gateway's currency.
    SmsCost = 29,
}

impl Counter {
    /// Every counter, for reading them all.
    pub const ALL: [Counter; 29] = [
        Counter::Delivered,
        Counter::Failed,
        Counter::Deferred,
        Counter::Hard,
        Counter::Soft,
        Counter::Policy,
        Counter::UniqueOpens,
        Counter::UniqueClicks,
        Counter::Opens,
        Counter::Clicks,
        Counter::Revenue,
        Counter::Orders,
        Counter::Unsent,
        Counter::MachineUniqueOpens,
        Counter::MachineOpens,
        Counter::MachineUniqueClicks,
        Counter::MachineClicks,
        Counter::Unsubscribes,
        Counter::Complaints,
        Counter::Erased,
        Counter::Sent,
        Counter::LateBounces,
        Counter::AutoReplies,
        Counter::DelayNotices,
        Counter::NotSentSuppressed,
        Counter::Handed,
        Counter::Dequeued,
        Counter::SmsParts,
        Counter::SmsCost,
    ];

    /// The name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Delivered => "delivered",
            Counter::Failed => "failed",
            Counter::Deferred => "deferred",
            Counter::Hard => "bounced_hard",
            Counter::Soft => "bounced_soft",
            Counter::Policy => "refused_policy",
            Counter::UniqueOpens => "unique_opens",
            Counter::UniqueClicks => "unique_clicks",
            Counter::Opens => "opens",
            Counter::Clicks => "clicks",
            Counter::Revenue => "revenue_cents",
            Counter::Orders => "orders",
            Counter::Unsent => "not_sent_no_consent",
            Counter::MachineUniqueOpens => "machine_unique_opens",
            Counter::MachineOpens => "machine_opens",
            Counter::MachineUniqueClicks => "machine_unique_clicks",
            Counter::MachineClicks => "machine_clicks",
            Counter::Unsubscribes => "unsubscribes",
            Counter::Complaints => "complaints",
            Counter::Erased => "not_sent_erased",
            Counter::Sent => "sent",
            Counter::LateBounces => "late_bounces",
            Counter::AutoReplies => "auto_replies",
            Counter::DelayNotices => "delay_notices",
            Counter::NotSentSuppressed => "not_sent_suppressed",
            Counter::Handed => "sms_handed",
            Counter::Dequeued => "sms_dequeued",
            Counter::SmsParts => "sms_parts",
            Counter::SmsCost => "sms_cost_ten_thousandths",
        }
    }
}

/// Engagement flag: opened.
pub const OPENED: u8 = 1;
/// Engagement flag: clicked.
pub const CLICKED: u8 = 2;
/// Engagement flag: opened, seen only from a machine (privacy proxy).
pub const MACHINE_OPENED: u8 = 4;
/// Engagement flag: clicked, seen only from a machine (link scanner).
pub const MACHINE_CLICKED: u8 = 8;
/// Engagement flag: unsubscribed through this message.
pub const UNSUBSCRIBED: u8 = 16;
/// Engagement flag: complained about this message (spam report).
pub const COMPLAINED: u8 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_pack_round_and_variant() {
        assert_eq!(unslot(slot(3, 2)), (3, 2));
        let s = SendRef {
            kind: SendKind::Campaign,
            id: 7,
            variant: slot(1, 4),
        };
        assert_eq!(s.round(), 1);
        assert_eq!(s.whole().variant, 0);
    }

    #[test]
    fn transactional_sends_are_per_tag_and_day() {
        let day = 20_000 * 86_400_000;
        let a = transactional("order-confirmation", day + 5);
        let b = transactional("order-confirmation", day + 86_399_999);
        let c = transactional("order-confirmation", day + 86_400_000);
        assert_eq!(a, b);
        assert_eq!(a.round(), 20_000);
        assert_ne!(a, c);
        assert_eq!(a.id, c.id);
        assert_ne!(a.id, transactional("welcome", day).id);
        assert!(a.id <= u64::from(u32::MAX));
    }

    #[test]
    fn tags_and_kinds_are_checked() {
        assert!(valid_tag("order-confirmation"));
        assert!(valid_tag("shop:de.v2_x"));
        assert!(!valid_tag(""));
        assert!(!valid_tag("a b"));
        assert!(!valid_tag(&"x".repeat(65)));
        for k in ["campaign", "automation", "test", "transactional", "preview"] {
            assert_eq!(SendKind::from_name(k).map(SendKind::name), Some(k));
        }
        assert_eq!(SendKind::from_name("Campaign"), None);
    }

    #[test]
    fn counter_codes_are_distinct() {
        let mut codes: Vec<u8> = Counter::ALL.iter().map(|c| *c as u8).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Counter::ALL.len());
    }
}
