//! `micro tasks`: schedules and the task queue of the server's tasks service.
//!
//! `schedule NAME (--every DUR | --cron EXPR | --hourly-at MM) --call SERVICE ENDPOINT [JSON]…` creates (or
//! replaces) a schedule whose task calls each `--call` in order, as the logged-in account; `schedules` lists them,
//! `unschedule NAME` deletes one (its queued tasks stay) and `run NAME` queues its task now, once. `list` shows
//! tasks newest first (`--state`, `--name`, `--limit`), `get ID` one task with each stage's result, and `retry ID`
//! queues a dead or failed task again. Durations are written `500ms`, `10s`, `1m`, `1h`; cron expressions have
//! seconds (`sec min hour day-of-month month day-of-week [year]`, UTC).
//!
//! Bad input (a bad duration, cron expression or JSON, an unknown service or endpoint) exits with 128; a schedule
//! or task that does not exist with 6.

use super::output::Printer;
use crate::exit::{CliError, RpcContext, from_core_status};
use crate::settings::{Output, Settings};
use clap::Subcommand;
use micro_client::Connection;
use micro_core::proto::tasks::{
    GetRequest, ListRequest, RetryRequest, RunRequest, Schedule, ScheduleRequest, SchedulesRequest, Stage, State, Task,
    UnscheduleRequest, schedule::When, tasks_client::TasksClient,
};
use micro_server::tasks::store::state_name;
use micro_server::tasks::timetable::{describe, format_ms};
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};
use tonic::transport::Channel;

/// Arguments of `micro tasks`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    micro tasks schedule greet --every 10s --call helloworld Helloworld.Call '{\"name\": \"Jane\"}'\n  \
    micro tasks schedule report --cron '0 0 6 * * *' --call reports Reports.Daily\n  \
    micro tasks list --state dead -o json\n  \
    micro tasks retry 0193a1b2-…")]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: TasksCommand,
}

/// `micro tasks` subcommands.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Create a schedule (or replace the one of the same name): when it fires, its stages are called in order.
    #[command(after_help = "Examples:\n  \
        micro tasks schedule greet --every 10s --call helloworld Helloworld.Call '{\"name\": \"Jane\"}'\n  \
        micro tasks schedule hourly --hourly-at 15 --call inventory Inventory.Collect --retries 5 --backoff 2s\n  \
        micro tasks schedule nightly --cron '0 30 2 * * *' --call a A.Export --call b B.Import")]
    Schedule(ScheduleArgs),
    /// List the schedules.
    Schedules,
    /// Delete a schedule (its queued tasks stay).
    Unschedule(NameArg),
    /// Queue a schedule's task now, once, outside its timetable; prints the task's id.
    Run(NameArg),
    /// List tasks, newest first.
    List(ListArgs),
    /// Show a task and each stage's result.
    Get(IdArg),
    /// Queue a dead or failed task again, with its attempts reset.
    Retry(IdArg),
}

/// Flags of `micro tasks schedule`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("when").required(true).args(["every", "cron", "hourly_at"])))]
pub struct ScheduleArgs {
    /// The schedule's name.
    pub name: String,
    /// Fire every DUR (`500ms`, `10s`, `1m`, `1h`; at least 100ms).
    #[arg(long, value_name = "DUR")]
    pub every: Option<String>,
    /// Fire by a cron expression with seconds, in UTC: `sec min hour day-of-month month day-of-week [year]`.
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
    /// Fire every hour at this minute (0-59).
    #[arg(long, value_name = "MM")]
    pub hourly_at: Option<String>,
    /// A stage: call ENDPOINT (`Handler.Method`) of SERVICE with the JSON request (default `{}`). Repeat for more
    /// stages, run in order; the first failure ends the attempt.
    #[arg(long, required = true, num_args = 2..=3, value_names = ["SERVICE", "ENDPOINT", "JSON"], action = clap::ArgAction::Append)]
    pub call: Vec<String>,
    /// How many times a failed task is retried before it is dead (1-100).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    /// The first retry's delay, doubling after each failure.
    #[arg(long, value_name = "DUR", default_value = "1s")]
    pub backoff: String,
}

/// A schedule's name.
#[derive(Debug, clap::Args)]
pub struct NameArg {
    /// The schedule's name.
    pub name: String,
}

/// A task's id.
#[derive(Debug, clap::Args)]
pub struct IdArg {
    /// The task's id.
    pub id: String,
}

/// A task state, for `--state`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StateArg {
    /// Queued.
    Pending,
    /// Being run.
    Running,
    /// Done.
    Succeeded,
    /// Failed, to be retried.
    Failed,
    /// Failed every attempt.
    Dead,
}

impl From<StateArg> for State {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Pending => State::Pending,
            StateArg::Running => State::Running,
            StateArg::Succeeded => State::Succeeded,
            StateArg::Failed => State::Failed,
            StateArg::Dead => State::Dead,
        }
    }
}

/// Flags of `micro tasks list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only tasks in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// Only tasks of this name (a schedule's name, or a worker task's).
    #[arg(long)]
    pub name: Option<String>,
    /// At most this many tasks.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub limit: u32,
}

/// Parses a duration flag (`500ms`, `10s`, `1m`, `1h`).
pub fn parse_duration(flag: &str, text: &str) -> Result<Duration, CliError> {
    humantime::parse_duration(text.trim())
        .map_err(|_| CliError::input(format!("invalid {flag} {text:?}: use a duration such as 500ms, 10s, 1m or 1h")))
}

fn client(conn: &Connection) -> TasksClient<Channel> {
    TasksClient::new(conn.channel())
}

fn rpc_error(settings: &Settings, status: &tonic::Status, endpoint: &str) -> CliError {
    from_core_status(status, &RpcContext { address: settings.proxy.clone(), endpoint: endpoint.into() }, "")
}

/// Runs `micro tasks`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let printer = Printer::new(settings.output, Output::Table);
    match args.command {
        TasksCommand::Schedule(a) => schedule(settings, &printer, a).await,
        TasksCommand::Schedules => schedules(settings, &printer).await,
        TasksCommand::Unschedule(a) => {
            let conn = settings.connect_authed().await?;
            client(&conn)
                .unschedule(conn.request(UnscheduleRequest { name: a.name }))
                .await
                .map_err(|s| rpc_error(settings, &s, "Tasks.Unschedule"))?;
            Ok(())
        }
        TasksCommand::Run(a) => {
            let conn = settings.connect_authed().await?;
            let task = client(&conn)
                .run(conn.request(RunRequest { name: a.name }))
                .await
                .map_err(|s| rpc_error(settings, &s, "Tasks.Run"))?
                .into_inner()
                .task
                .unwrap_or_default();
            print_id(&printer, &task)
        }
        TasksCommand::List(a) => list(settings, &printer, a).await,
        TasksCommand::Get(a) => {
            let conn = settings.connect_authed().await?;
            let task = client(&conn)
                .get(conn.request(GetRequest { id: a.id }))
                .await
                .map_err(|s| rpc_error(settings, &s, "Tasks.Get"))?
                .into_inner()
                .task
                .unwrap_or_default();
            print_task(&printer, &task)
        }
        TasksCommand::Retry(a) => {
            let conn = settings.connect_authed().await?;
            let task = client(&conn)
                .retry(conn.request(RetryRequest { id: a.id }))
                .await
                .map_err(|s| rpc_error(settings, &s, "Tasks.Retry"))?
                .into_inner()
                .task
                .unwrap_or_default();
            print_id(&printer, &task)
        }
    }
}

fn print_id(printer: &Printer, task: &Task) -> anyhow::Result<()> {
    if printer.format() == Output::Table {
        printer.line(&task.id)?;
    } else {
        printer.json(&task_json(task))?;
    }
    Ok(())
}

/// Reads `schedule`'s flags into a schedule, refusing what is obviously wrong before asking the server.
pub fn schedule_of(a: &ScheduleArgs) -> Result<Schedule, CliError> {
    let when = if let Some(every) = &a.every {
        let d = parse_duration("--every", every)?;
        When::EveryMs(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    } else if let Some(cron) = &a.cron {
        When::Cron(cron.trim().to_string())
    } else if let Some(minute) = &a.hourly_at {
        let m =
            minute.trim().parse::<u32>().ok().filter(|m| *m <= 59).ok_or_else(|| {
                CliError::input(format!("invalid --hourly-at {minute:?}: give a minute from 0 to 59"))
            })?;
        When::HourlyAt(m)
    } else {
        return Err(CliError::input("give one of --every, --cron or --hourly-at"));
    };
    let mut stages = Vec::new();
    for call in calls(&a.call) {
        if call.len() < 2 {
            return Err(CliError::input(format!(
                "--call takes SERVICE ENDPOINT [JSON], and the request must be a JSON object such as \
                 '{{\"name\": \"Jane\"}}'; cannot read {:?}",
                call.join(" ")
            )));
        }
        let (service, endpoint) = (call[0].clone(), call[1].clone());
        let request = call.get(2).cloned().unwrap_or_default();
        if !request.trim().is_empty() {
            let value: Value = serde_json::from_str(&request).map_err(|e| {
                CliError::input(format!("the request of --call {service} {endpoint} is not valid JSON: {e}"))
            })?;
            if !value.is_object() {
                return Err(CliError::input(format!(
                    "the request of --call {service} {endpoint} must be a JSON object, such as '{{\"name\": \"Jane\"}}'"
                )));
            }
        }
        stages.push(Stage { service, endpoint, request });
    }
    if !(1..=100).contains(&a.retries) {
        return Err(CliError::input(format!("invalid --retries {}: give 1 to 100", a.retries)));
    }
    let backoff = parse_duration("--backoff", &a.backoff)?;
    Ok(Schedule {
        name: a.name.clone(),
        when: Some(when),
        stages,
        retries: a.retries,
        backoff_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX).max(1),
        ..Default::default()
    })
}

/// The `--call` values, one group per stage. clap hands them over flat; a request is a JSON object (it starts
/// with `{`, or is empty) and a service name never is, so the groups are found again unambiguously.
fn calls(values: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for v in values {
        let is_request = {
            let t = v.trim();
            t.is_empty() || t.starts_with('{')
        };
        match out.last_mut() {
            Some(last) if last.len() < 2 || (last.len() == 2 && is_request) => last.push(v.clone()),
            _ => out.push(vec![v.clone()]),
        }
    }
    out
}

async fn schedule(settings: &Settings, printer: &Printer, a: ScheduleArgs) -> anyhow::Result<()> {
    let schedule = schedule_of(&a)?;
    let conn = settings.connect_authed().await?;
    let stored = client(&conn)
        .schedule(conn.request(ScheduleRequest { schedule: Some(schedule) }))
        .await
        .map_err(|s| rpc_error(settings, &s, "Tasks.Schedule"))?
        .into_inner()
        .schedule
        .unwrap_or_default();
    if printer.format() == Output::Table {
        printer.message(format!(
            "Scheduled {} ({}); next at {}",
            stored.name,
            describe(stored.when.as_ref()),
            time(stored.next_ms).unwrap_or_default()
        ));
    } else {
        printer.json(&schedule_json(&stored))?;
    }
    Ok(())
}

async fn schedules(settings: &Settings, printer: &Printer) -> anyhow::Result<()> {
    let conn = settings.connect_authed().await?;
    let schedules = client(&conn)
        .schedules(conn.request(SchedulesRequest {}))
        .await
        .map_err(|s| rpc_error(settings, &s, "Tasks.Schedules"))?
        .into_inner()
        .schedules;
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                describe(s.when.as_ref()),
                s.stages.iter().map(|st| format!("{} {}", st.service, st.endpoint)).collect::<Vec<_>>().join(", "),
                time(s.next_ms).unwrap_or_default(),
                time(s.last_ms).unwrap_or_else(|| "never".into()),
                s.owner.clone(),
            ]
        })
        .collect();
    printer.table(&["NAME", "WHEN", "STAGES", "NEXT", "LAST", "OWNER"], &rows, || {
        Value::Array(schedules.iter().map(schedule_json).collect())
    })?;
    Ok(())
}

async fn list(settings: &Settings, printer: &Printer, a: ListArgs) -> anyhow::Result<()> {
    let conn = settings.connect_authed().await?;
    let req = ListRequest {
        state: a.state.map_or(State::Unspecified, State::from) as i32,
        name: a.name.unwrap_or_default(),
        limit: a.limit,
    };
    let tasks = client(&conn)
        .list(conn.request(req))
        .await
        .map_err(|s| rpc_error(settings, &s, "Tasks.List"))?
        .into_inner()
        .tasks;
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                state_of(t).to_string(),
                format!("{}/{}", t.attempts, t.retries.saturating_add(1)),
                time(t.created_ms).unwrap_or_default(),
                first_line(&t.error),
            ]
        })
        .collect();
    printer.table(&["ID", "NAME", "STATE", "ATTEMPTS", "CREATED", "ERROR"], &rows, || {
        Value::Array(tasks.iter().map(task_json).collect())
    })?;
    Ok(())
}

fn print_task(printer: &Printer, t: &Task) -> anyhow::Result<()> {
    if printer.format() != Output::Table {
        printer.json(&task_json(t))?;
        return Ok(());
    }
    let mut lines = vec![
        format!("id:        {}", t.id),
        format!("name:      {}", t.name),
        format!("state:     {}", state_of(t)),
        format!("attempts:  {} of {}", t.attempts, t.retries.saturating_add(1)),
        format!("backoff:   {}", format_ms(t.backoff_ms)),
        format!("owner:     {}", t.owner),
        format!("created:   {}", time(t.created_ms).unwrap_or_default()),
        format!("due:       {}", time(t.due_ms).unwrap_or_default()),
    ];
    if let Some(s) = time(t.started_ms) {
        lines.push(format!("started:   {s}"));
    }
    if let Some(f) = time(t.finished_ms) {
        lines.push(format!("finished:  {f}"));
    }
    if !t.worker.is_empty() {
        lines.push(format!("worker:    {}", t.worker));
    }
    if !t.payload.is_empty() {
        lines.push(format!("payload:   {}", t.payload));
    }
    if !t.result.is_empty() {
        lines.push(format!("result:    {}", t.result));
    }
    if !t.error.is_empty() {
        lines.push(format!("error:     {}", t.error));
    }
    for (i, stage) in t.stages.iter().enumerate() {
        let request = if stage.request.is_empty() { "{}" } else { &stage.request };
        lines.push(format!("stage {}:   {} {} {request}", i + 1, stage.service, stage.endpoint));
        if let Some(r) = t.results.get(i) {
            let outcome = if r.ok { format!("ok: {}", shorten(&r.response)) } else { format!("error: {}", r.error) };
            lines.push(format!("  {} ({}ms)", outcome, r.duration_ms));
        }
    }
    printer.line(lines.join("\n"))?;
    Ok(())
}

/// A response cut for the terminal (`-o json` prints it whole).
fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    format!("{}… (-o json shows it all)", text.chars().take(MAX).collect::<String>())
}

fn state_of(t: &Task) -> &'static str {
    state_name(State::try_from(t.state).unwrap_or_default())
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 80 { format!("{}…", line.chars().take(79).collect::<String>()) } else { line.into() }
}

/// A time in Unix milliseconds as RFC 3339 (UTC, to the millisecond); `None` for 0.
fn time(ms: i64) -> Option<String> {
    (ms > 0).then(|| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string())
}

/// JSON text as JSON (a string when it is not JSON; null when empty).
fn parsed(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn schedule_json(s: &Schedule) -> Value {
    let (kind, value) = match &s.when {
        Some(When::EveryMs(ms)) => ("every_ms", json!(ms)),
        Some(When::HourlyAt(m)) => ("hourly_at", json!(m)),
        Some(When::Cron(c)) => ("cron", json!(c)),
        None => ("when", Value::Null),
    };
    let mut v = json!({
        "name": s.name,
        "when": describe(s.when.as_ref()),
        "stages": s.stages.iter().map(stage_json).collect::<Vec<_>>(),
        "retries": s.retries,
        "backoff_ms": s.backoff_ms,
        "owner": s.owner,
        "next": time(s.next_ms),
        "last": time(s.last_ms),
        "created": time(s.created_ms),
    });
    v[kind] = value;
    v
}

fn stage_json(s: &Stage) -> Value {
    json!({"service": s.service, "endpoint": s.endpoint, "request": parsed(&s.request)})
}

/// A task as JSON: what `list -o json` and `get -o json` print.
pub fn task_json(t: &Task) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "schedule": t.schedule,
        "state": state_of(t),
        "attempts": t.attempts,
        "retries": t.retries,
        "backoff_ms": t.backoff_ms,
        "error": t.error,
        "owner": t.owner,
        "worker": t.worker,
        "created": time(t.created_ms),
        "due": time(t.due_ms),
        "started": time(t.started_ms),
        "finished": time(t.finished_ms),
        "payload": parsed(&t.payload),
        "result": parsed(&t.result),
        "stages": t.stages.iter().map(stage_json).collect::<Vec<_>>(),
        "results": t.results.iter().map(|r| json!({
            "service": r.service,
            "endpoint": r.endpoint,
            "ok": r.ok,
            "code": r.code,
            "response": parsed(&r.response),
            "truncated": r.truncated,
            "error": r.error,
            "started": time(r.started_ms),
            "duration_ms": r.duration_ms,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: TasksCommand,
    }

    fn parse(args: &[&str]) -> Result<ScheduleArgs, String> {
        let argv = std::iter::once("tasks").chain(args.iter().copied());
        match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.command {
            TasksCommand::Schedule(a) => Ok(a),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn schedules_read_every_stage_and_their_timetable() {
        let a = parse(&[
            "schedule",
            "s",
            "--every",
            "10s",
            "--call",
            "a",
            "A.B",
            "{\"x\":1}",
            "--call",
            "b",
            "B.C",
            "--retries",
            "2",
            "--backoff",
            "200ms",
        ])
        .unwrap();
        let s = schedule_of(&a).unwrap();
        assert_eq!(s.when, Some(When::EveryMs(10_000)));
        assert_eq!((s.stages.len(), s.stages[0].request.as_str(), s.stages[1].request.as_str()), (2, "{\"x\":1}", ""));
        assert_eq!((s.retries, s.backoff_ms), (2, 200));
        let a = parse(&["schedule", "s", "--hourly-at", "15", "--call", "a", "A.B"]).unwrap();
        assert_eq!(schedule_of(&a).unwrap().when, Some(When::HourlyAt(15)));
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_message() {
        let e = |args: &[&str]| schedule_of(&parse(args).unwrap()).unwrap_err().message;
        assert!(e(&["schedule", "s", "--every", "10x", "--call", "a", "A.B"]).contains("invalid --every \"10x\""));
        assert!(e(&["schedule", "s", "--hourly-at", "60", "--call", "a", "A.B"]).contains("0 to 59"));
        assert!(e(&["schedule", "s", "--every", "1s", "--call", "a", "A.B", "{x"]).contains("not valid JSON"));
        assert!(e(&["schedule", "s", "--every", "1s", "--call", "a", "A.B", "--retries", "0"]).contains("1 to 100"));
        assert!(parse(&["schedule", "s", "--every", "1s", "--cron", "* * * * * *", "--call", "a", "A.B"]).is_err());
        assert!(parse(&["schedule", "s", "--call", "a", "A.B"]).is_err(), "a timetable is required");
        assert!(parse(&["schedule", "s", "--every", "1s"]).is_err(), "a stage is required");
        let m = e(&["schedule", "s", "--every", "1s", "--call", "a", "A.B", "[1]", "--call", "b", "B.C"]);
        assert!(m.contains("must be a JSON object"), "{m}");
    }
}
