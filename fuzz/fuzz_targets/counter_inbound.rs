//! Every internal message a counter decodes from the coordinator: the
//! bodies of its 2PC and catch-up endpoints (`counter/src/http.rs`) and the
//! answers to its own calls (`counter/src/catchup.rs`: register and
//! caught-up answer a `JoinPlan`, the outcome endpoint an `Outcome`). Each
//! input is tried as every one of them, and as the postcard prepare body
//! the coordinator sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_common::api::{
    AbortRequest, AcceptLossRequest, CatchUpRequest, CommitRequest, JoinPlan, Outcome,
    PrepareRequest, PREPARE_CONTENT_TYPE,
};
use tally_fuzz::json_round_trip;

fuzz_target!(|data: &[u8]| {
    json_round_trip::<PrepareRequest>(data);
    if let Ok(prepare) = PrepareRequest::decode(Some(PREPARE_CONTENT_TYPE), data) {
        let again = PrepareRequest::decode(Some(PREPARE_CONTENT_TYPE), &prepare.to_postcard());
        assert_eq!(
            again.as_ref(),
            Ok(&prepare),
            "postcard round trip changed the prepare"
        );
    }
    json_round_trip::<CommitRequest>(data);
    json_round_trip::<AbortRequest>(data);
    json_round_trip::<CatchUpRequest>(data);
    json_round_trip::<JoinPlan>(data);
    json_round_trip::<Outcome>(data);
    json_round_trip::<AcceptLossRequest>(data);
});
