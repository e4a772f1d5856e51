//! Every internal message the coordinator decodes from a counter: the
//! bodies of `POST /internal/register` and `/internal/caught-up`
//! (`coordinator/src/http.rs`), and the answers of the counters' endpoints
//! (`coordinator/src/client.rs`: a `CounterStatus` from prepare, commit,
//! abort and status, a `FencedCount` from a fenced read), and an operator's
//! `POST /internal/promote`. Each input is tried as every one of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_common::api::{
    CaughtUpRequest, CounterStatus, FencedCount, PromoteRequest, RegisterRequest,
};
use tally_fuzz::json_round_trip;

fuzz_target!(|data: &[u8]| {
    json_round_trip::<RegisterRequest>(data);
    json_round_trip::<CaughtUpRequest>(data);
    json_round_trip::<CounterStatus>(data);
    json_round_trip::<FencedCount>(data);
    json_round_trip::<PromoteRequest>(data);
});
