//! Redis's glob-style patterns (`KEYS`, `SCAN MATCH`, `CONFIG GET`): `*`, `?`, `[abc]`,
//! `[^a]`, `[a-z]` and `\x` escapes, matched over bytes as `stringmatchlen` does.

/// Whether `text` matches `pattern`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matcher with one backtracking point for the last `*`: linear-ish, no recursion,
    // so a hostile pattern cannot blow the stack.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if let Some(step) = match_one(pattern, p, text[t]) {
            p += step;
            t += 1;
            continue;
        }
        if pattern.get(p) == Some(&b'*') {
            while pattern.get(p) == Some(&b'*') {
                p += 1;
            }
            star = Some((p, t));
            continue;
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while pattern.get(p) == Some(&b'*') {
        p += 1;
    }
    p == pattern.len()
}

/// If the pattern element at `p` (not `*`) matches byte `c`, how many pattern bytes it spans.
fn match_one(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match *pattern.get(p)? {
        b'*' => None,
        b'?' => Some(1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(2),
        b'[' => {
            let mut i = p + 1;
            let negate = pattern.get(i) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut matched = false;
            loop {
                let Some(&b) = pattern.get(i) else {
                    // Unclosed class: Redis treats the end of pattern as its end.
                    i -= 1;
                    break;
                };
                if b == b']' {
                    break;
                }
                if b == b'\\' && i + 1 < pattern.len() {
                    i += 1;
                    matched |= pattern[i] == c;
                } else if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() {
                    let (mut lo, mut hi) = (b, pattern[i + 2]);
                    if lo > hi {
                        std::mem::swap(&mut lo, &mut hi);
                    }
                    matched |= (lo..=hi).contains(&c);
                    i += 2;
                } else {
                    matched |= b == c;
                }
                i += 1;
            }
            (matched != negate).then_some(i + 1 - p)
        }
        b => (b == c).then_some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn patterns_match_like_redis() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("user:*:name", "user:42:name"));
        assert!(!m("user:*:name", "user:42:age"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaab"));
        assert!(!m("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaa"));
    }
}
