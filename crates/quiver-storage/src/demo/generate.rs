//! The demo rows: every row a pure function of its id (a SplitMix64 hash), so the
//! same `--tasks N` gives the same rows on every backend and every run, and a larger
//! N extends a smaller one.

/// Tasks per feature.
pub const TASKS_PER_FEATURE: u64 = 20;
/// Features per epic.
pub const FEATURES_PER_EPIC: u64 = 50;
/// Task statuses, in workflow order.
pub const TASK_STATUSES: [&str; 5] = ["todo", "in_progress", "blocked", "review", "done"];
/// Agent types a task can be assigned to.
pub const AGENT_TYPES: [&str; 5] = ["planner", "coder", "reviewer", "tester", "researcher"];

/// 2025-01-01T00:00:00Z in microseconds.
const BASE_MICROS: i64 = 1_735_689_600_000_000;
const HOUR_MICROS: i64 = 3_600_000_000;

/// SplitMix64: a fast, well-mixed hash of a 64-bit input.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic stream of pseudo-random numbers for one row.
struct RowRandom(u64);

impl RowRandom {
    fn new(table: u64, id: u64) -> Self {
        Self(mix(table.wrapping_mul(0x1000_0000_0000_0000) ^ id))
    }

    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const VERBS: [&str; 12] = [
    "Implement",
    "Refactor",
    "Test",
    "Document",
    "Review",
    "Optimize",
    "Design",
    "Migrate",
    "Fix",
    "Profile",
    "Harden",
    "Benchmark",
];
const NOUNS: [&str; 12] = [
    "login flow",
    "billing export",
    "search index",
    "cache layer",
    "audit log",
    "rate limiter",
    "report builder",
    "sync worker",
    "schema migration",
    "alerting rules",
    "API gateway",
    "data importer",
];
const PHRASES: [&str; 8] = [
    "so that operators can see what changed",
    "without breaking existing clients",
    "and cover the edge cases found in review",
    "to cut p99 latency in half",
    "behind a feature flag first",
    "with metrics and an alert",
    "as agreed in the design review",
    "and remove the old code path",
];

fn title(random: &mut RowRandom, id: u64) -> String {
    format!("{} {} #{id}", random.pick(&VERBS), random.pick(&NOUNS))
}

fn description(random: &mut RowRandom) -> String {
    format!(
        "{} the {} {}.",
        random.pick(&VERBS),
        random.pick(&NOUNS),
        random.pick(&PHRASES)
    )
}

/// The number of epics, features and tasks at a scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoScale {
    /// Tasks.
    pub tasks: u64,
    /// Features (one per 20 tasks).
    pub features: u64,
    /// Epics (one per 50 features).
    pub epics: u64,
}

impl DemoScale {
    /// The scale with `tasks` tasks.
    pub fn new(tasks: u64) -> Self {
        let features = tasks.div_ceil(TASKS_PER_FEATURE).max(1);
        let epics = features.div_ceil(FEATURES_PER_EPIC).max(1);
        Self {
            tasks,
            features,
            epics,
        }
    }
}

/// An epic or a feature row.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRow {
    /// Primary key.
    pub id: u64,
    /// Parent epic (features only).
    pub epic_id: Option<u64>,
    /// Unique key, `EPIC-0001` or `FEAT-000001`.
    pub key: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// `planned`, `active` or `done`.
    pub status: &'static str,
    /// 1 (highest) … 5.
    pub priority: i64,
    /// Creation time, µs since the epoch.
    pub created_at: i64,
    /// Last update, µs since the epoch.
    pub updated_at: i64,
}

/// A task row.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Primary key.
    pub id: u64,
    /// Parent feature.
    pub feature_id: u64,
    /// Unique key, `TASK-0000042`.
    pub key: String,
    /// Title.
    pub title: String,
    /// Description (NULL for one task in ten).
    pub description: Option<String>,
    /// One of [`TASK_STATUSES`].
    pub status: &'static str,
    /// 1 (highest) … 5.
    pub priority: i64,
    /// One of [`AGENT_TYPES`], or unassigned.
    pub agent_type: Option<&'static str>,
    /// Estimated effort.
    pub estimate_hours: Option<f64>,
    /// Creation time, µs since the epoch.
    pub created_at: i64,
    /// Last update, µs since the epoch.
    pub updated_at: i64,
    /// When it was done (status `done` only).
    pub completed_at: Option<i64>,
}

/// A status change of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// The task.
    pub task_id: u64,
    /// Status before (NULL for the first transition out of creation).
    pub old_status: &'static str,
    /// Status after.
    pub new_status: &'static str,
    /// Agent that made the change.
    pub agent: Option<&'static str>,
    /// When, µs since the epoch.
    pub changed_at: i64,
}

const PLAN_STATUSES: [&str; 3] = ["planned", "active", "done"];

fn plan_row(table: u64, id: u64, epic_id: Option<u64>) -> PlanRow {
    let mut random = RowRandom::new(table, id);
    let created_at = BASE_MICROS + random.below(300 * 24) as i64 * HOUR_MICROS;
    let updated_at = created_at + random.below(60 * 24) as i64 * HOUR_MICROS;
    let key = match epic_id {
        None => format!("EPIC-{id:04}"),
        Some(_) => format!("FEAT-{id:06}"),
    };
    PlanRow {
        id,
        epic_id,
        key,
        title: title(&mut random, id),
        description: description(&mut random),
        status: random.pick(&PLAN_STATUSES),
        priority: 1 + random.below(5) as i64,
        created_at,
        updated_at,
    }
}

/// The epic with this id (ids start at 1).
pub fn epic(id: u64) -> PlanRow {
    plan_row(1, id, None)
}

/// The feature with this id; feature `f` belongs to epic `(f - 1) / 50 + 1`.
pub fn feature(id: u64) -> PlanRow {
    plan_row(2, id, Some((id - 1) / FEATURES_PER_EPIC + 1))
}

/// The task with this id; task `t` belongs to feature `(t - 1) / 20 + 1`.
pub fn task(id: u64) -> TaskRow {
    let mut random = RowRandom::new(3, id);
    // 30 % todo, 20 % in progress, 10 % blocked, 10 % review, 30 % done.
    let status = match random.below(10) {
        0..=2 => "todo",
        3..=4 => "in_progress",
        5 => "blocked",
        6 => "review",
        _ => "done",
    };
    let created_at = BASE_MICROS + random.below(365 * 24 * 60) as i64 * 60_000_000;
    let updated_at = created_at + random.below(30 * 24 * 60) as i64 * 60_000_000;
    let agent_type = (status != "todo" || random.below(2) == 0).then(|| random.pick(&AGENT_TYPES));
    let has_description = random.below(10) != 0;
    TaskRow {
        id,
        feature_id: (id - 1) / TASKS_PER_FEATURE + 1,
        key: format!("TASK-{id:07}"),
        title: title(&mut random, id),
        description: has_description.then(|| description(&mut random)),
        status,
        priority: 1 + random.below(5) as i64,
        agent_type,
        estimate_hours: (random.below(8) != 0).then(|| (1 + random.below(64)) as f64 / 2.0),
        created_at,
        updated_at,
        completed_at: (status == "done").then_some(updated_at),
    }
}

/// The status changes that brought `task` to its status, oldest first.
pub fn history(task: &TaskRow) -> Vec<HistoryRow> {
    let path: &[&'static str] = match task.status {
        "in_progress" => &["todo", "in_progress"],
        "blocked" => &["todo", "in_progress", "blocked"],
        "review" => &["todo", "in_progress", "review"],
        "done" => &["todo", "in_progress", "review", "done"],
        _ => &["todo"],
    };
    let steps = path.len() as i64 - 1;
    let span = (task.updated_at - task.created_at).max(steps);
    path.windows(2)
        .enumerate()
        .map(|(step, pair)| HistoryRow {
            task_id: task.id,
            old_status: pair[0],
            new_status: pair[1],
            agent: task.agent_type,
            changed_at: task.created_at + span * (step as i64 + 1) / steps.max(1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_depend_only_on_their_id() {
        assert_eq!(task(42), task(42));
        assert_eq!(feature(7), feature(7));
        assert_ne!(task(42).title, task(43).title);
        assert_eq!(task(1).feature_id, 1);
        assert_eq!(task(20).feature_id, 1);
        assert_eq!(task(21).feature_id, 2);
        assert_eq!(feature(50).epic_id, Some(1));
        assert_eq!(feature(51).epic_id, Some(2));
    }

    #[test]
    fn scale_matches_the_hierarchy() {
        assert_eq!(
            DemoScale::new(10_000),
            DemoScale {
                tasks: 10_000,
                features: 500,
                epics: 10
            }
        );
        assert_eq!(
            DemoScale::new(1),
            DemoScale {
                tasks: 1,
                features: 1,
                epics: 1
            }
        );
        assert_eq!(
            DemoScale::new(1_001),
            DemoScale {
                tasks: 1_001,
                features: 51,
                epics: 2
            }
        );
    }

    #[test]
    fn history_walks_the_workflow_to_the_current_status() {
        for id in 1..500 {
            let row = task(id);
            let changes = history(&row);
            match changes.last() {
                Some(last) => assert_eq!(last.new_status, row.status),
                None => assert_eq!(row.status, "todo"),
            }
            for pair in changes.windows(2) {
                assert_eq!(pair[0].new_status, pair[1].old_status);
                assert!(pair[0].changed_at <= pair[1].changed_at);
            }
            assert_eq!(row.completed_at.is_some(), row.status == "done");
        }
    }

    #[test]
    fn status_mix_is_roughly_as_designed() {
        let n = 10_000;
        let done = (1..=n).filter(|&id| task(id).status == "done").count();
        assert!((2_500..3_500).contains(&done), "{done} of {n} done");
    }
}
