//! Model-based fuzzing of a topic: any sequence of subscribes (with or without a resume id),
//! unsubscribes, publishes and drains gives every subscriber exactly the events a simple model
//! says it should see, in order, with a gap notice exactly when history fell short.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe { resume_back: Option<u8> },
    Unsubscribe { which: u8 },
    Publish { size: u8 },
    Drain { which: u8 },
}

fuzz_target!(|input: (u8, Vec<Op>)| {
    let (history, ops) = input;
    let ops = ops.into_iter().map(|op| match op {
        Op::Subscribe { resume_back } => crier::internals::fuzzing::TopicOp::Subscribe { resume_back },
        Op::Unsubscribe { which } => crier::internals::fuzzing::TopicOp::Unsubscribe { which },
        Op::Publish { size } => crier::internals::fuzzing::TopicOp::Publish { size },
        Op::Drain { which } => crier::internals::fuzzing::TopicOp::Drain { which },
    });
    crier::internals::fuzzing::check_topic_ops(usize::from(history % 32), ops);
});
