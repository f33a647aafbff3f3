//! Bounce and complaint messages shaped like what receivers send, for the
//! inbound tests.
#![allow(dead_code)]

/// The feedback-loop address of the inbound tests' configs.
pub const FBL: &str = "fbl@shop.test";

/// An RFC 3464 delivery status notification about `rcpt`.
pub fn dsn(rcpt: &str, action: &str, status: &str, diagnostic: &str, message_id: &str) -> String {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.receiver.test>\r\n\
To: bounce@shop.test\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"BND\"\r\n\
\r\n\
--BND\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
This is the mail system at host mx.receiver.test. I'm sorry to have to inform you\r\n\
that your message could not be delivered to one or more recipients.\r\n\
\r\n\
--BND\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.receiver.test\r\n\
\r\n\
Final-Recipient: rfc822; {rcpt}\r\n\
Action: {action}\r\n\
Status: {status}\r\n\
Diagnostic-Code: smtp; {diagnostic}\r\n\
\r\n\
--BND\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: Shop <news@shop.test>\r\n\
To: {rcpt}\r\n\
Subject: News\r\n\
Message-ID: <{message_id}>\r\n\
\r\n\
--BND--\r\n"
    )
}

/// An ARF (RFC 5965) abuse report about the message `message_id` to `rcpt`,
/// whose envelope sender was `mail_from` (a VERP address, as a feedback
/// loop quotes it in `Original-Mail-From`).
pub fn arf(rcpt: &str, message_id: &str, mail_from: &str) -> String {
    format!(
        "From: Feedback Loop <feedback@fbl.receiver.test>\r\n\
To: {FBL}\r\n\
Subject: Complaint about message from 192.0.2.1\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"ARF\"\r\n\
\r\n\
--ARF\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
This is an email abuse report for an email message received from IP 192.0.2.1.\r\n\
\r\n\
--ARF\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: ReceiverFBL/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <{mail_from}>\r\n\
Original-Rcpt-To: <{rcpt}>\r\n\
Source-IP: 192.0.2.1\r\n\
\r\n\
--ARF\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: Shop <news@shop.test>\r\n\
To: {rcpt}\r\n\
Subject: News\r\n\
Message-ID: <{message_id}>\r\n\
\r\n\
Hello\r\n\
\r\n\
--ARF--\r\n"
    )
}

/// A vacation auto-reply (RFC 3834).
pub fn vacation(from: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: news@shop.test\r\nSubject: Out of office: News\r\nAuto-Submitted: auto-replied\r\nX-Autoreply: yes\r\n\r\nI am away until Monday.\r\n"
    )
}
