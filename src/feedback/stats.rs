//! Statistics: counts per model and UTC day, the time range a request asks
//! for, how that range splits into whole days (read from the counters) and
//! partial edge days (read from the entries), and the Wilson interval.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{ModelName, OutputKind, Rating};

/// Milliseconds in a UTC day (no leap seconds in Unix time).
pub const MILLIS_PER_DAY: i64 = 86_400_000;

/// The z of a two-sided 95 % interval.
pub const Z_95: f64 = 1.959_964;

/// The counts of a set of entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Entries.
    pub total: i64,
    /// Rated `thumbs_up`.
    pub thumbs_up: i64,
    /// Rated `thumbs_down`.
    pub thumbs_down: i64,
    /// Without a rating.
    pub unrated: i64,
    /// With a description (an empty one included).
    pub with_description: i64,
}

impl Counts {
    /// The counts of one entry in that state.
    #[must_use]
    pub fn of(rating: Option<Rating>, has_description: bool) -> Self {
        Self {
            total: 1,
            thumbs_up: i64::from(rating == Some(Rating::ThumbsUp)),
            thumbs_down: i64::from(rating == Some(Rating::ThumbsDown)),
            unrated: i64::from(rating.is_none()),
            with_description: i64::from(has_description),
        }
    }

    /// Adds `other` into these counts.
    pub fn add(&mut self, other: &Self) {
        self.total += other.total;
        self.thumbs_up += other.thumbs_up;
        self.thumbs_down += other.thumbs_down;
        self.unrated += other.unrated;
        self.with_description += other.with_description;
    }

    /// `self - other`, field by field.
    #[must_use]
    pub fn minus(mut self, other: &Self) -> Self {
        self.total -= other.total;
        self.thumbs_up -= other.thumbs_up;
        self.thumbs_down -= other.thumbs_down;
        self.unrated -= other.unrated;
        self.with_description -= other.with_description;
        self
    }

    /// Whether every count is zero.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// `thumbs_up / (thumbs_up + thumbs_down)`; `None` without ratings.
    #[must_use]
    pub fn satisfaction(&self) -> Option<f64> {
        let rated = self.thumbs_up + self.thumbs_down;
        #[allow(clippy::cast_precision_loss)] // counts stay far below 2^52
        (rated > 0).then(|| self.thumbs_up as f64 / rated as f64)
    }

    /// The 95 % Wilson score interval of [`satisfaction`](Self::satisfaction).
    #[must_use]
    pub fn satisfaction_ci95(&self) -> Option<(f64, f64)> {
        wilson_interval(self.thumbs_up, self.thumbs_up + self.thumbs_down, Z_95)
    }
}

/// The Wilson score interval of `successes` out of `trials` for `z`,
/// clamped to `[0, 1]`; `None` without trials.
#[must_use]
pub fn wilson_interval(successes: i64, trials: i64, z: f64) -> Option<(f64, f64)> {
    if trials <= 0 || successes < 0 || successes > trials {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // counts stay far below 2^52
    let (k, n) = (successes as f64, trials as f64);
    let p = k / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    // Rounding may put a bound a hair past p or past [0, 1]: the interval
    // always holds p.
    let low = (centre - half).clamp(0.0, 1.0).min(p);
    let high = (centre + half).clamp(0.0, 1.0).max(p);
    Some((low, high))
}

/// How statistics are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatsGrouping {
    /// One group of everything.
    #[default]
    None,
    /// One group per model.
    Model,
    /// One group per UTC day.
    Day,
    /// One group per model and day.
    ModelDay,
}

impl StatsGrouping {
    /// Parses `group_by`: `model`, `day` or `model,day`.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "model" => Some(Self::Model),
            "day" => Some(Self::Day),
            "model,day" => Some(Self::ModelDay),
            _ => None,
        }
    }

    /// Whether groups carry a model.
    #[must_use]
    pub fn by_model(self) -> bool {
        matches!(self, Self::Model | Self::ModelDay)
    }

    /// Whether groups carry a day.
    #[must_use]
    pub fn by_day(self) -> bool {
        matches!(self, Self::Day | Self::ModelDay)
    }
}

/// Which entries a statistics request counts (within a scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsFilter {
    /// The kind.
    pub kind: OutputKind,
    /// Entries created at or after this many milliseconds since the epoch.
    pub from_millis: Option<i64>,
    /// Entries created before this many milliseconds since the epoch.
    pub to_millis: Option<i64>,
    /// Only this model's entries.
    pub model: Option<ModelName>,
}

/// The whole milliseconds at or after `at`: `created_at >= at` holds exactly
/// when `created_at_ms >= ceil_millis(at)` (entries hold whole milliseconds),
/// and so does `<`.
#[must_use]
pub fn ceil_millis(at: DateTime<Utc>) -> i64 {
    let millis = at.timestamp_millis();
    if at.timestamp_subsec_nanos() % 1_000_000 == 0 {
        millis
    } else {
        millis + 1
    }
}

/// The UTC day (whole days since the epoch) of a point in milliseconds.
#[must_use]
pub fn day_of_millis(millis: i64) -> i64 {
    millis.div_euclid(MILLIS_PER_DAY)
}

/// How a time range is read: whole days from the counters, the rest from
/// the entries. Bounds are half-open `[from, to)`; `None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangePlan {
    /// The days `[from, to)` read from the counters; `None`: none.
    pub days: Option<(Option<i64>, Option<i64>)>,
    /// The millisecond ranges read from the entries.
    pub entries: Vec<(Option<i64>, Option<i64>)>,
}

impl RangePlan {
    /// Splits `[from, to)` (milliseconds) so that every instant is read
    /// exactly once.
    #[must_use]
    pub fn split(from: Option<i64>, to: Option<i64>) -> Self {
        let nothing = Self {
            days: None,
            entries: Vec::new(),
        };
        // The first whole day at or after `from`, the day `to` falls in.
        let first_day =
            from.map(|from| day_of_millis(from) + i64::from(from.rem_euclid(MILLIS_PER_DAY) != 0));
        let end_day = to.map(day_of_millis);
        match (from, to, first_day, end_day) {
            (Some(from), Some(to), _, _) if from >= to => nothing,
            // Both bounds inside one day.
            (_, _, Some(first), Some(end)) if first > end => Self {
                days: None,
                entries: vec![(from, to)],
            },
            _ => {
                let head = from.zip(first_day).and_then(|(from, first)| {
                    (from < first * MILLIS_PER_DAY)
                        .then_some((Some(from), Some(first * MILLIS_PER_DAY)))
                });
                let tail = to.zip(end_day).and_then(|(to, end)| {
                    (end * MILLIS_PER_DAY < to).then_some((Some(end * MILLIS_PER_DAY), Some(to)))
                });
                let days = match (first_day, end_day) {
                    (Some(first), Some(end)) if first >= end => None,
                    bounds => Some(bounds),
                };
                Self {
                    days,
                    entries: head.into_iter().chain(tail).collect(),
                }
            }
        }
    }
}

/// Counts per `(model, day)`, `model` `""` for entries without one.
pub type DayCounts = BTreeMap<(String, i64), Counts>;

/// One group of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsGroup {
    /// The model, when grouped by model.
    pub model: Option<String>,
    /// The UTC day, when grouped by day.
    pub day: Option<i64>,
    /// Its counts.
    pub counts: Counts,
}

/// Folds per-(model, day) counts into the groups asked for, ordered by
/// model then day. Without grouping there is exactly one group (zeros when
/// nothing matched); otherwise groups without entries are left out.
#[must_use]
pub fn into_groups(counts: &DayCounts, grouping: StatsGrouping) -> Vec<StatsGroup> {
    let mut groups: BTreeMap<(Option<&str>, Option<i64>), Counts> = BTreeMap::new();
    if grouping == StatsGrouping::None {
        groups.insert((None, None), Counts::default());
    }
    for ((model, day), value) in counts {
        if value.total == 0 {
            continue;
        }
        let key = (
            grouping.by_model().then_some(model.as_str()),
            grouping.by_day().then_some(*day),
        );
        groups.entry(key).or_default().add(value);
    }
    groups
        .into_iter()
        .map(|((model, day), counts)| StatsGroup {
            model: model.map(str::to_owned),
            day,
            counts,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wilson_matches_a_worked_example() {
        // 8 of 10: the textbook interval is [0.4902, 0.9433].
        let (low, high) = wilson_interval(8, 10, Z_95).unwrap();
        assert!((low - 0.4902).abs() < 1e-4, "{low}");
        assert!((high - 0.9433).abs() < 1e-4, "{high}");
        assert_eq!(wilson_interval(0, 0, Z_95), None);
        assert!(wilson_interval(0, 5, Z_95).unwrap().0.abs() < 1e-12);
        assert!((wilson_interval(5, 5, Z_95).unwrap().1 - 1.0).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn wilson_bounds_hold_p_within_unit_interval(trials in 1_i64..5_000_000, share in 0.0_f64..=1.0) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            let successes = ((trials as f64) * share).floor() as i64;
            let (low, high) = wilson_interval(successes, trials, Z_95).unwrap();
            #[allow(clippy::cast_precision_loss)]
            let p = successes as f64 / trials as f64;
            prop_assert!((0.0..=1.0).contains(&low));
            prop_assert!((0.0..=1.0).contains(&high));
            prop_assert!(low <= p && p <= high, "{low} {p} {high}");
        }

        #[test]
        fn a_range_plan_reads_every_millisecond_once(
            from in proptest::option::of(-3 * MILLIS_PER_DAY..5 * MILLIS_PER_DAY),
            to in proptest::option::of(-3 * MILLIS_PER_DAY..5 * MILLIS_PER_DAY),
            probe in -4 * MILLIS_PER_DAY..6 * MILLIS_PER_DAY,
        ) {
            let plan = RangePlan::split(from, to);
            let within = |(lo, hi): (Option<i64>, Option<i64>), at: i64| {
                lo.is_none_or(|lo| at >= lo) && hi.is_none_or(|hi| at < hi)
            };
            let by_day = plan.days.is_some_and(|(lo, hi)| within((lo, hi), day_of_millis(probe)));
            let by_entries = plan.entries.iter().filter(|range| within(**range, probe)).count();
            let wanted = within((from, to), probe);
            prop_assert_eq!(usize::from(by_day) + by_entries, usize::from(wanted));
            // Entry ranges never cover a whole day.
            for (lo, hi) in &plan.entries {
                prop_assert!(lo.is_some() && hi.is_some());
                prop_assert!(hi.unwrap_or_default() - lo.unwrap_or_default() < MILLIS_PER_DAY);
            }
        }
    }
}
