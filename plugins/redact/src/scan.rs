//! Hand-written scanners for card numbers and email addresses. Both work on ASCII bytes of a
//! `&str` and cut it only at ASCII characters, so the result is valid UTF-8.

/// Masks card numbers in `text`: runs of 13 to 19 digits, optionally split by single spaces or
/// dashes, whose digits pass the Luhn check (when `luhn` is true). Every digit but the last four
/// becomes `*`, separators are kept: `4111 1111 1111 1111` → `**** **** **** 1111`,
/// `4111111111111111` → `************1111`. A run of more than 19 digits without separators
/// (an id, say) is not a card number and is left alone. `None` when nothing was masked.
pub fn mask_cards(text: &str, luhn: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A maximal run of digit groups joined by single separators.
        groups.clear();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            groups.push((start, j));
            let joined = j + 1 < bytes.len()
                && matches!(bytes[j], b' ' | b'-')
                && bytes[j + 1].is_ascii_digit();
            if !joined {
                break;
            }
            j += 1;
        }
        // Within the run, the longest card-like span of whole groups from each start.
        let mut g = 0;
        while g < groups.len() {
            let mut digits = 0;
            let mut best = None;
            for (h, &(s, e)) in groups.iter().enumerate().skip(g) {
                digits += e - s;
                if digits > 19 {
                    break;
                }
                if digits >= 13 && (!luhn || luhn_valid(bytes, &groups[g..=h])) {
                    best = Some((h, digits));
                }
            }
            match best {
                Some((h, digits)) => {
                    let out = out.get_or_insert_with(|| bytes.to_vec());
                    let mut to_mask = digits - 4;
                    for &(s, e) in &groups[g..=h] {
                        for b in &mut out[s..e] {
                            if to_mask == 0 {
                                break;
                            }
                            *b = b'*';
                            to_mask -= 1;
                        }
                    }
                    g = h + 1;
                }
                None => g += 1,
            }
        }
        i = j;
    }
    out.map(|bytes| String::from_utf8(bytes).expect("only ASCII digits were replaced"))
}

/// The Luhn checksum over the digits of `groups`.
fn luhn_valid(bytes: &[u8], groups: &[(usize, usize)]) -> bool {
    let digits = groups
        .iter()
        .rev()
        .flat_map(|&(s, e)| bytes[s..e].iter().rev());
    let sum: u32 = digits
        .enumerate()
        .map(|(n, &b)| {
            let d = u32::from(b - b'0');
            if n % 2 == 1 {
                let d = d * 2;
                if d > 9 {
                    d - 9
                } else {
                    d
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// Whether `domain` looks like a mail domain: dot-separated labels of letters, digits and
/// dashes (not at a label's ends), at least two labels, the last one of 2+ letters.
fn valid_domain(domain: &[u8]) -> bool {
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in domain.split(|&b| b == b'.') {
        if label.is_empty() || label[0] == b'-' || label[label.len() - 1] == b'-' {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

/// Masks email addresses in `text`: the local part keeps its first character and the rest
/// becomes `***` (`john.doe@example.com` → `j***@example.com`; a one-character local part
/// becomes `***`); the domain is kept. An address already masked this way is not masked again.
/// `None` when nothing was masked.
pub fn mask_emails(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut at = 0;
    while let Some(pos) = bytes[at..].iter().position(|&b| b == b'@') {
        let p = at + pos;
        at = p + 1;
        let mut start = p;
        while start > copied && is_local(bytes[start - 1]) {
            start -= 1;
        }
        while start < p && bytes[start] == b'.' {
            start += 1;
        }
        let mut end = p + 1;
        while end < bytes.len() && is_domain(bytes[end]) {
            end += 1;
        }
        while end > p + 1 && matches!(bytes[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if start == p || !valid_domain(&bytes[p + 1..end]) {
            continue;
        }
        out.push_str(&text[copied..start]);
        if p - start > 1 {
            out.push_str(&text[start..start + 1]);
        }
        out.push_str("***");
        out.push_str(&text[p..end]);
        copied = end;
        at = end;
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_in_common_layouts() {
        let m = |t| mask_cards(t, true);
        assert_eq!(m("4111111111111111").as_deref(), Some("************1111"));
        assert_eq!(
            m("pay 4111 1111 1111 1111 now").as_deref(),
            Some("pay **** **** **** 1111 now")
        );
        assert_eq!(
            m("{\"card\":\"5500-0000-0000-0004\"}").as_deref(),
            Some("{\"card\":\"****-****-****-0004\"}")
        );
        // Amex, 15 digits, 4-6-5.
        assert_eq!(m("3782 822463 10005").as_deref(), Some("**** ****** *0005"));
        // Two cards in one text.
        assert_eq!(
            m("4111111111111111,5500000000000004").as_deref(),
            Some("************1111,************0004")
        );
    }

    #[test]
    fn not_cards() {
        let m = |t| mask_cards(t, true);
        assert_eq!(m("order 12345 of 2024-01-15"), None);
        // Luhn fails (a millisecond timestamp).
        assert_eq!(m("ts 1700000000001"), None);
        // Longer than 19 digits: an id.
        assert_eq!(m("id 41111111111111111111111"), None);
        // Double separators do not join groups.
        assert_eq!(m("4111  1111  1111  1111"), None);
        assert_eq!(m(""), None);
        // Already masked.
        assert_eq!(m("**** **** **** 1111"), None);
    }

    #[test]
    fn cards_next_to_other_numbers() {
        let m = |t| mask_cards(t, true);
        // A date joined by a space: the card part is still found.
        assert_eq!(
            m("2024-01-15 4111111111111111").as_deref(),
            Some("2024-01-15 ************1111")
        );
        // Without the Luhn check any 13-19 digit run goes.
        assert_eq!(
            mask_cards("ts 1700000000001", false).as_deref(),
            Some("ts *********0001")
        );
        // Non-ASCII text around is kept intact.
        assert_eq!(
            m("carte n° 4111111111111111 — merci").as_deref(),
            Some("carte n° ************1111 — merci")
        );
    }

    #[test]
    fn emails() {
        assert_eq!(
            mask_emails("from john.doe@example.com.").as_deref(),
            Some("from j***@example.com.")
        );
        assert_eq!(
            mask_emails("a@b.io, x+tag@mail.example.org").as_deref(),
            Some("***@b.io, x***@mail.example.org")
        );
        assert_eq!(
            mask_emails("<Jane_Doe@sub-domain.example.co.uk>").as_deref(),
            Some("<J***@sub-domain.example.co.uk>")
        );
        assert_eq!(
            mask_emails("é.jean@exemple.fr").as_deref(),
            Some("é.j***@exemple.fr")
        );
        assert_eq!(mask_emails("j***@example.com"), None, "already masked");
        assert_eq!(mask_emails("user@localhost"), None);
        assert_eq!(mask_emails("@example.com"), None);
        assert_eq!(mask_emails("a@b"), None);
        assert_eq!(mask_emails("a@-b.com"), None);
        assert_eq!(mask_emails("a@b.c1"), None);
        assert_eq!(mask_emails("x @ y.com"), None);
        assert_eq!(mask_emails("no at sign"), None);
        assert_eq!(mask_emails("a@b@c.com").as_deref(), Some("a@***@c.com"));
    }
}
