//! Threshold alarms (spec 12.1-6), evaluated purely from datapoints and a time: a rule on one
//! metric with a comparison, a threshold, a period, and "M out of N" breaching periods; time
//! windows (days of the week, UTC minutes of the day) carry thresholds of their own ("higher
//! CPU is normal during the nightly batch"). States are OK, ALARM and INSUFFICIENT_DATA; the
//! [`AlarmTracker`] reports each transition once, for the audit log and webhooks.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl Comparison {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Gt => value > threshold,
            Comparison::Ge => value >= threshold,
            Comparison::Lt => value < threshold,
            Comparison::Le => value <= threshold,
        }
    }
}

/// A part of the week with its own threshold. `days` are 0 = Monday … 6 = Sunday (empty: every
/// day); minutes are UTC, `start_minute` inclusive, `end_minute` exclusive; a window with
/// `end_minute <= start_minute` wraps past midnight (and then belongs to its start day).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    #[serde(default)]
    pub days: Vec<u8>,
    pub start_minute: u16,
    pub end_minute: u16,
    pub threshold: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmRule {
    pub metric: String,
    pub comparison: Comparison,
    pub threshold: f64,
    /// Length of one evaluation period.
    pub period_s: u64,
    /// N: periods looked at.
    pub periods: u32,
    /// M: breaching periods needed to alarm.
    pub datapoints: u32,
    #[serde(default)]
    pub windows: Vec<TimeWindow>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid alarm rule: {0}")]
pub struct RuleError(pub &'static str);

impl AlarmRule {
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.period_s == 0 || self.period_s > 86_400 {
            return Err(RuleError("period_s must be 1..=86400"));
        }
        if self.periods == 0 || self.periods > 1440 {
            return Err(RuleError("periods must be 1..=1440"));
        }
        if self.datapoints == 0 || self.datapoints > self.periods {
            return Err(RuleError("datapoints must be 1..=periods"));
        }
        if !self.threshold.is_finite() {
            return Err(RuleError("threshold must be finite"));
        }
        for w in &self.windows {
            if w.start_minute >= 1440
                || w.end_minute > 1440
                || w.days.iter().any(|d| *d > 6)
                || !w.threshold.is_finite()
            {
                return Err(RuleError("window minutes must be 0..1440, days 0..=6"));
            }
        }
        Ok(())
    }

    /// The threshold in force at `at_ms`: the first window that covers it, else the rule's.
    pub fn threshold_at(&self, at_ms: i64) -> f64 {
        let minutes = at_ms.div_euclid(60_000);
        let day_index = minutes.div_euclid(1440);
        let minute = minutes.rem_euclid(1440) as u16;
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        let weekday = |d: i64| ((d + 3).rem_euclid(7)) as u8;
        let day_ok = |w: &TimeWindow, d: i64| w.days.is_empty() || w.days.contains(&weekday(d));
        for w in &self.windows {
            let inside = if w.start_minute < w.end_minute {
                minute >= w.start_minute && minute < w.end_minute && day_ok(w, day_index)
            } else {
                (minute >= w.start_minute && day_ok(w, day_index))
                    || (minute < w.end_minute && day_ok(w, day_index - 1))
            };
            if inside {
                return w.threshold;
            }
        }
        self.threshold
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlarmState {
    Ok,
    Alarm,
    InsufficientData,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Datapoint {
    pub at_ms: i64,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub state: AlarmState,
    /// Periods with at least one datapoint.
    pub present: u32,
    pub breaching: u32,
    /// Newest period first: the period's average and the threshold that applied, or `None`.
    pub periods: Vec<Option<(f64, f64)>>,
}

/// Evaluates the last N whole periods ending at `now_ms`. Period k covers
/// `[now - (k+1)·P, now - k·P)`; its value is the average of its datapoints and its threshold is
/// the one in force at its start. ALARM when at least M periods breach; OK when at least M
/// periods have data and fewer than M breach; INSUFFICIENT_DATA otherwise.
pub fn evaluate(rule: &AlarmRule, points: &[Datapoint], now_ms: i64) -> Evaluation {
    let p = rule.period_s as i64 * 1000;
    let mut periods = Vec::with_capacity(rule.periods as usize);
    let (mut present, mut breaching) = (0, 0);
    for k in 0..rule.periods as i64 {
        let end = now_ms - k * p;
        let start = end - p;
        let (sum, n) = points
            .iter()
            .filter(|d| d.at_ms >= start && d.at_ms < end && d.value.is_finite())
            .fold((0.0, 0u32), |(s, n), d| (s + d.value, n + 1));
        if n == 0 {
            periods.push(None);
            continue;
        }
        let avg = sum / f64::from(n);
        let threshold = rule.threshold_at(start);
        present += 1;
        if rule.comparison.holds(avg, threshold) {
            breaching += 1;
        }
        periods.push(Some((avg, threshold)));
    }
    let state = if breaching >= rule.datapoints {
        AlarmState::Alarm
    } else if present >= rule.datapoints {
        AlarmState::Ok
    } else {
        AlarmState::InsufficientData
    };
    Evaluation {
        state,
        present,
        breaching,
        periods,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub from: AlarmState,
    pub to: AlarmState,
    pub at_ms: i64,
    pub reason: String,
}

/// Remembers an alarm's state so each change is reported exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmTracker {
    pub state: AlarmState,
    pub since_ms: i64,
}

impl AlarmTracker {
    pub fn new(now_ms: i64) -> AlarmTracker {
        AlarmTracker {
            state: AlarmState::InsufficientData,
            since_ms: now_ms,
        }
    }

    pub fn step(&mut self, rule: &AlarmRule, points: &[Datapoint], now_ms: i64) -> Option<Transition> {
        let e = evaluate(rule, points, now_ms);
        if e.state == self.state {
            return None;
        }
        let t = Transition {
            from: self.state,
            to: e.state,
            at_ms: now_ms,
            reason: format!(
                "{} of the last {} periods of {} s breached {:?} (need {}), {} had data",
                e.breaching, rule.periods, rule.period_s, rule.comparison, rule.datapoints, e.present
            ),
        };
        self.state = e.state;
        self.since_ms = now_ms;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> AlarmRule {
        AlarmRule {
            metric: "cpu_percent".into(),
            comparison: Comparison::Gt,
            threshold: 80.0,
            period_s: 60,
            periods: 3,
            datapoints: 2,
            windows: vec![],
        }
    }

    // 2026-11-30 is a Monday; 00:00 UTC.
    const MONDAY: i64 = 1_795_996_800_000;

    #[test]
    fn spec_12_1_6_m_of_n_goes_ok_alarm_ok_on_a_moving_clock() {
        let r = rule();
        r.validate().unwrap();
        let mut clock = MONDAY + 3_600_000;
        let mut tr = AlarmTracker::new(clock);
        let mut pts = Vec::new();
        let feed = |pts: &mut Vec<Datapoint>, clock: &mut i64, v: f64| {
            // Two datapoints per 60 s period.
            for _ in 0..2 {
                pts.push(Datapoint {
                    at_ms: *clock,
                    value: v,
                });
                *clock += 30_000;
            }
        };
        assert_eq!(evaluate(&r, &pts, clock).state, AlarmState::InsufficientData);
        feed(&mut pts, &mut clock, 10.0);
        assert!(
            tr.step(&r, &pts, clock).is_none(),
            "one period of data: still insufficient"
        );
        feed(&mut pts, &mut clock, 10.0);
        let t = tr.step(&r, &pts, clock).unwrap();
        assert_eq!((t.from, t.to), (AlarmState::InsufficientData, AlarmState::Ok));
        feed(&mut pts, &mut clock, 95.0);
        assert!(tr.step(&r, &pts, clock).is_none(), "1 of 3 breaching < M=2");
        feed(&mut pts, &mut clock, 95.0);
        let t = tr.step(&r, &pts, clock).unwrap();
        assert_eq!((t.from, t.to), (AlarmState::Ok, AlarmState::Alarm));
        assert!(tr.step(&r, &pts, clock).is_none(), "a transition is reported once");
        feed(&mut pts, &mut clock, 20.0);
        assert!(tr.step(&r, &pts, clock).is_none(), "still 2 of the last 3");
        feed(&mut pts, &mut clock, 20.0);
        let t = tr.step(&r, &pts, clock).unwrap();
        assert_eq!((t.from, t.to), (AlarmState::Alarm, AlarmState::Ok));
        // Data stops: after N periods without data the alarm is INSUFFICIENT_DATA.
        clock += 3 * 60_000;
        let t = tr.step(&r, &pts, clock).unwrap();
        assert_eq!(t.to, AlarmState::InsufficientData);
    }

    #[test]
    fn spec_12_1_6_time_windows_carry_their_own_threshold() {
        let mut r = rule();
        r.periods = 1;
        r.datapoints = 1;
        // Nightly batch 22:00–02:00 on weekdays: up to 99 % is normal.
        r.windows = vec![TimeWindow {
            days: vec![0, 1, 2, 3, 4],
            start_minute: 22 * 60,
            end_minute: 2 * 60,
            threshold: 99.0,
        }];
        r.validate().unwrap();
        let at = |h: i64, m: i64| MONDAY + (h * 60 + m) * 60_000;
        assert_eq!(r.threshold_at(at(12, 0)), 80.0);
        assert_eq!(r.threshold_at(at(23, 0)), 99.0, "Monday night");
        assert_eq!(
            r.threshold_at(at(24 + 1, 30)),
            99.0,
            "Tuesday 01:30 belongs to Monday's window"
        );
        assert_eq!(r.threshold_at(at(24 + 2, 0)), 80.0, "end is exclusive");
        // Saturday 23:00 is outside (days 0..=4), Sunday 01:00 too (window started Saturday).
        assert_eq!(r.threshold_at(at(5 * 24 + 23, 0)), 80.0);
        assert_eq!(r.threshold_at(at(6 * 24 + 1, 0)), 80.0);
        // The same 90 % load alarms at noon and not at night.
        let noon = [Datapoint {
            at_ms: at(12, 0) + 1000,
            value: 90.0,
        }];
        assert_eq!(evaluate(&r, &noon, at(12, 1)).state, AlarmState::Alarm);
        let night = [Datapoint {
            at_ms: at(23, 0) + 1000,
            value: 90.0,
        }];
        assert_eq!(evaluate(&r, &night, at(23, 1)).state, AlarmState::Ok);
    }

    #[test]
    fn spec_12_1_6_invalid_rules_are_refused_and_comparisons_hold() {
        let mut r = rule();
        r.datapoints = 4;
        assert!(r.validate().is_err());
        let mut r = rule();
        r.period_s = 0;
        assert!(r.validate().is_err());
        let mut r = rule();
        r.windows = vec![TimeWindow {
            days: vec![7],
            start_minute: 0,
            end_minute: 10,
            threshold: 1.0,
        }];
        assert!(r.validate().is_err());
        assert!(Comparison::Ge.holds(1.0, 1.0) && !Comparison::Gt.holds(1.0, 1.0));
        assert!(Comparison::Le.holds(1.0, 1.0) && Comparison::Lt.holds(0.5, 1.0));
        let j: AlarmRule = serde_json::from_str(
            r#"{"metric":"cpu_percent","comparison":">=","threshold":1,"period_s":60,"periods":5,"datapoints":3}"#,
        )
        .unwrap();
        assert_eq!(j.comparison, Comparison::Ge);
    }
}
