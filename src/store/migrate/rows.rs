//! The rows `migrate` carries from one backend to the other: each table's columns as both schemas
//! store them (timestamps as unix ms, headers as their JSON text, booleans as `bool`), and no
//! database's types. The SQLite side reads them (`sqlite/export.rs`), the PostgreSQL side writes
//! them (`postgres/import.rs`); neither sees the other.

/// A row of `events`.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub received_at: i64,
    /// JSON `[[name, value], …]`, copied as stored.
    pub headers: String,
    pub body: Vec<u8>,
    pub dedupe_key: Option<String>,
    pub routed: bool,
}

/// A row of `deliveries`; the id is kept (it is what operators and logs name a delivery by).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub route: String,
    pub destination: String,
    pub msg_id: String,
    pub status: String,
    pub attempts: i32,
    pub next_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub order_key: Option<String>,
    pub order_block: bool,
    pub held: bool,
    pub batch_id: Option<i64>,
    pub parent_id: Option<i64>,
    pub leads: bool,
}

/// A row of `batches`: deliveries sent as one request.
#[derive(Debug, Clone)]
pub struct DeliveryBatch {
    pub id: i64,
    pub destination: String,
    pub msg_id: String,
    pub status: String,
    pub attempts: i32,
    pub next_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub events: i32,
    pub bytes: i64,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

/// A row of `delivery_bodies`: a transform's output.
#[derive(Debug, Clone)]
pub struct Body {
    pub delivery_id: i64,
    pub body: Option<Vec<u8>>,
    /// JSON of the headers the transform set.
    pub headers: Option<String>,
    pub url: Option<String>,
    pub context: Option<Vec<u8>>,
}

/// A row of `attempts`.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub delivery_id: i64,
    pub n: i32,
    pub at: i64,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub response: Option<Vec<u8>>,
    pub error: Option<String>,
}

/// A row of `cancellations`.
#[derive(Debug, Clone)]
pub struct Cancellation {
    pub delivery_id: i64,
    pub at: i64,
    pub actor: String,
    pub reason: Option<String>,
}

/// A row of `destination_state`: a pause (or a resume, which keeps its row).
#[derive(Debug, Clone)]
pub struct DestinationState {
    pub name: String,
    pub paused: bool,
    pub reason: Option<String>,
    pub updated_at: i64,
}

/// Some rows of one table. Tables come in the order their foreign keys need: events, deliveries,
/// then the delivery's bodies, attempts and cancellations, and the destinations' state.
#[derive(Debug, Clone)]
pub enum Batch {
    Events(Vec<Event>),
    DeliveryBatches(Vec<DeliveryBatch>),
    Deliveries(Vec<Delivery>),
    Bodies(Vec<Body>),
    Attempts(Vec<Attempt>),
    Cancellations(Vec<Cancellation>),
    DestinationStates(Vec<DestinationState>),
}

/// What the reading side hands the writing side, in order: batches, then `Done` once every table
/// was read, or `Failed` (and nothing after it). A channel that closes before either means the
/// reader stopped (a panic): the copy is not committed.
#[derive(Debug)]
pub enum Read {
    Batch(Batch),
    Done,
    Failed(crate::store::StoreError),
}
