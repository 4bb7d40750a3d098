//! The compliance scorecard: per site and per day, the share of judged frames that were
//! compliant per rule (frames whose verdict was `unknown` are not judged), the episodes opened,
//! the median times to resolve and to acknowledge, and the cameras offline (cameras that sent
//! frames on some day of the period but none that day); a chart per site (inline SVG), a ranking
//! of sites, and CSV. Pure: [`super::store::DayFacts`] in, numbers and text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::store::DayFacts;

/// The median of `v` (the mean of the middle two for an even count); `None` when empty.
pub fn median(v: &[i64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2] as f64
    } else {
        (s[n / 2 - 1] as f64 + s[n / 2] as f64) / 2.0
    })
}

/// Compliant share of judged frames; `None` when nothing was judged.
pub fn share(compliant: i64, violation: i64) -> Option<f64> {
    let judged = compliant + violation;
    (judged > 0).then(|| compliant as f64 / judged as f64)
}

/// Compliant and judged frames of a day over all rules.
pub fn day_totals(f: &DayFacts) -> (i64, i64) {
    f.judged
        .values()
        .fold((0, 0), |(c, j), (fc, fv)| (c + fc, j + fc + fv))
}

/// The scorecard as CSV: one line per site, day and rule (rule empty for a day nothing was
/// judged on), times in seconds.
pub fn csv(facts: &BTreeMap<(String, String), DayFacts>) -> String {
    let mut out = String::from(
        "site,day,rule,compliant_frames,judged_frames,compliant_share,episodes_opened,median_resolve_secs,median_ack_secs,cameras_seen,cameras_offline\n",
    );
    let secs = |m: Option<f64>| m.map(|v| format!("{:.1}", v / 1000.0)).unwrap_or_default();
    for ((site, day), f) in facts {
        let common = format!(
            "{},{},{},{},{}",
            f.opened,
            secs(median(&f.resolve_ms)),
            secs(median(&f.ack_ms)),
            f.cameras_seen,
            f.cameras_offline,
        );
        let rules: Vec<(&str, i64, i64)> = if f.judged.is_empty() {
            vec![("", 0, 0)]
        } else {
            f.judged
                .iter()
                .map(|(r, (c, v))| (r.as_str(), *c, *v))
                .collect()
        };
        for (rule, c, v) in rules {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{}",
                csv_field(site),
                day,
                csv_field(rule),
                c,
                c + v,
                share(c, v).map(|s| format!("{s:.4}")).unwrap_or_default(),
                common
            );
        }
    }
    out
}

/// A CSV field, quoted when it must be; a leading formula character is neutralised (a
/// spreadsheet would run `=…`).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Sites ranked by their compliant share over the period, best first; sites with nothing
/// judged come last. `(site, compliant, judged, episodes opened)`.
pub fn ranking(facts: &BTreeMap<(String, String), DayFacts>) -> Vec<(String, i64, i64, i64)> {
    let mut by_site: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for ((site, _), f) in facts {
        let (c, j) = day_totals(f);
        let e = by_site.entry(site).or_default();
        e.0 += c;
        e.1 += j;
        e.2 += f.opened;
    }
    let mut out: Vec<_> = by_site
        .into_iter()
        .map(|(s, (c, j, o))| (s.to_string(), c, j, o))
        .collect();
    out.sort_by(|a, b| {
        let sa = share(a.1, a.2 - a.1).unwrap_or(-1.0);
        let sb = share(b.1, b.2 - b.1).unwrap_or(-1.0);
        sb.total_cmp(&sa).then(a.0.cmp(&b.0))
    });
    out
}

/// A line chart of one site's daily compliant share over `days` (inline SVG, no scripts).
pub fn chart(site: &str, days: &[String], facts: &BTreeMap<(String, String), DayFacts>) -> String {
    let (w, h, pad) = (640.0, 180.0, 30.0);
    let n = days.len().max(2) as f64;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
    let y = |s: f64| h - pad - (h - 2.0 * pad) * s;
    let mut svg = format!(
        r##"<svg class="chart" data-site="{site}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="compliance of {site}"><rect width="{w}" height="{h}" fill="#fff"/><line x1="{pad}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/><line x1="{pad}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#ddd"/><text x="2" y="{ty1}" font-size="10">100%</text><text x="2" y="{ty0}" font-size="10">0%</text>"##,
        site = super::pages::esc(site),
        y0 = y(0.0),
        y1 = y(1.0),
        x1 = w - pad,
        ty1 = y(1.0) + 4.0,
        ty0 = y(0.0) + 4.0,
    );
    let mut points = Vec::new();
    for (i, d) in days.iter().enumerate() {
        if let Some(f) = facts.get(&(site.to_string(), d.clone())) {
            let (c, j) = day_totals(f);
            if let Some(s) = share(c, j - c) {
                points.push((x(i), y(s), d, s));
            }
        }
    }
    if points.len() > 1 {
        let path: Vec<String> = points
            .iter()
            .map(|(px, py, _, _)| format!("{px:.1},{py:.1}"))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="#2a6" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
    }
    for (px, py, d, s) in &points {
        let _ = write!(
            svg,
            r##"<circle cx="{px:.1}" cy="{py:.1}" r="3" fill="#2a6"><title>{d}: {:.1}%</title></circle>"##,
            s * 100.0
        );
    }
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        let _ = write!(
            svg,
            r##"<text x="{pad}" y="{h}" font-size="10" dy="-4">{first}</text><text x="{x1}" y="{h}" font-size="10" dy="-4" text-anchor="end">{last}</text>"##,
            x1 = w - pad
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(rules: &[(&str, i64, i64)], opened: i64) -> DayFacts {
        DayFacts {
            judged: rules
                .iter()
                .map(|(r, c, v)| (r.to_string(), (*c, *v)))
                .collect(),
            opened,
            resolve_ms: vec![3_000, 1_000, 2_000, 10_000],
            ack_ms: vec![5_000],
            cameras_seen: 2,
            cameras_offline: 1,
        }
    }

    #[test]
    fn medians_and_shares() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5]), Some(5.0));
        assert_eq!(median(&[3, 1, 2]), Some(2.0));
        assert_eq!(median(&[4, 1, 2, 3]), Some(2.5));
        assert_eq!(share(0, 0), None);
        assert_eq!(share(3, 1), Some(0.75));
    }

    #[test]
    fn csv_has_a_line_per_site_day_and_rule() {
        let mut m = BTreeMap::new();
        m.insert(
            ("site-1".to_string(), "2026-04-19".to_string()),
            facts(&[("mask", 3, 1), ("gloves", 1, 1)], 2),
        );
        m.insert(
            ("=evil".to_string(), "2026-04-19".to_string()),
            facts(&[], 0),
        );
        let text = csv(&m);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines.contains(&"site-1,2026-04-19,mask,3,4,0.7500,2,2.5,5.0,2,1"),
            "{text}"
        );
        assert!(
            lines.contains(&"'=evil,2026-04-19,,0,0,,0,2.5,5.0,2,1"),
            "{text}"
        );
    }

    #[test]
    fn ranking_puts_the_most_compliant_first_and_the_unjudged_last() {
        let mut m = BTreeMap::new();
        m.insert(("a".into(), "d1".into()), facts(&[("mask", 1, 1)], 1));
        m.insert(("b".into(), "d1".into()), facts(&[("mask", 9, 1)], 1));
        m.insert(("c".into(), "d1".into()), facts(&[], 0));
        let r: Vec<String> = ranking(&m).into_iter().map(|r| r.0).collect();
        assert_eq!(r, ["b", "a", "c"]);
        let days = vec!["d1".to_string(), "d2".to_string()];
        let svg = chart("b", &days, &m);
        assert!(
            svg.starts_with("<svg") && svg.contains("d1: 90.0%"),
            "{svg}"
        );
    }
}
