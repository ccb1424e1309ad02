//! The sends of one connection on their way to the store, as a plain queue
//! with no I/O: they are stored in the order the connection sent them and
//! answered in that order, while a client that does not wait for each ack
//! still gets many stored per round trip.
//!
//! At most one batch is in flight. What arrives meanwhile queues, and goes
//! as the next batch once the one in flight is answered. The store appends
//! a batch's sends of one room in one step, in order (`Log::append`), so
//! one connection's sends are stored in the order sent, however many are
//! in flight; sends to different rooms have no order between them to keep.

use std::collections::VecDeque;

use crate::fields::Room;

/// A connection's sends in flight and waiting.
pub struct Sends<T> {
    queued: VecDeque<T>,
    in_flight: usize,
    /// Most sends in one batch.
    batch: usize,
}

impl<T> Sends<T> {
    pub fn new(batch: usize) -> Sends<T> {
        Sends {
            queued: VecDeque::new(),
            in_flight: 0,
            batch,
        }
    }

    /// Sends in flight and waiting.
    pub fn len(&self) -> usize {
        self.in_flight + self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a send; returns the batch to store now when none is in flight.
    pub fn push(&mut self, send: T) -> Option<Vec<T>> {
        self.queued.push_back(send);
        if self.in_flight > 0 {
            return None;
        }
        self.next()
    }

    /// The batch in flight was answered; returns the next one, if any.
    pub fn finished(&mut self) -> Option<Vec<T>> {
        self.in_flight = 0;
        self.next()
    }

    fn next(&mut self) -> Option<Vec<T>> {
        if self.queued.is_empty() {
            return None;
        }
        let take = self.queued.len().min(self.batch);
        let batch: Vec<T> = self.queued.drain(..take).collect();
        self.in_flight = batch.len();
        Some(batch)
    }
}

/// A batch split by room, each room's sends in their order, with their
/// places in the batch: what one `Log::append` per room takes.
pub fn by_room<T>(batch: Vec<T>, room: impl Fn(&T) -> Room) -> Vec<(Room, Vec<(usize, T)>)> {
    let mut rooms: Vec<(Room, Vec<(usize, T)>)> = Vec::new();
    for (at, send) in batch.into_iter().enumerate() {
        let name = room(&send);
        match rooms.iter_mut().find(|(r, _)| *r == name) {
            Some((_, sends)) => sends.push((at, send)),
            None => rooms.push((name, vec![(at, send)])),
        }
    }
    rooms
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Send(u8),
        Answer,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![3 => (0u8..3).prop_map(Op::Send), 1 => Just(Op::Answer)]
    }

    proptest! {
        /// Whatever the timing of answers, the batches handed to the store,
        /// one after another, hold the sends in the order they came, each
        /// once, no batch is larger than the limit, and one at a time is in
        /// flight; split by room, each room keeps that order.
        #[test]
        fn sends_reach_the_store_in_the_order_sent(ops in prop::collection::vec(op(), 0..200), limit in 1usize..6) {
            let mut sends = Sends::new(limit);
            let mut sent = Vec::new();
            let mut stored: Vec<(u8, usize)> = Vec::new();
            let mut in_flight: Option<Vec<(u8, usize)>> = None;
            let store = |batch: Vec<(u8, usize)>, in_flight: &mut Option<Vec<(u8, usize)>>| {
                assert!(in_flight.is_none(), "a second batch while one is in flight");
                assert!(batch.len() <= limit);
                let rooms: Vec<Room> = (0..3).map(|n| Room::parse(&format!("r{n}")).unwrap()).collect();
                for (room, part) in by_room(batch.clone(), |s| rooms[s.0 as usize].clone()) {
                    let places: Vec<usize> = part.iter().map(|(at, _)| *at).collect();
                    assert!(places.windows(2).all(|w| w[0] < w[1]), "{room:?} out of order");
                }
                *in_flight = Some(batch);
            };
            for op in ops {
                match op {
                    Op::Send(room) => {
                        let send = (room, sent.len());
                        sent.push(send);
                        if let Some(batch) = sends.push(send) {
                            store(batch, &mut in_flight);
                        }
                    }
                    Op::Answer => {
                        if let Some(done) = in_flight.take() {
                            stored.extend(done);
                            if let Some(batch) = sends.finished() {
                                store(batch, &mut in_flight);
                            }
                        }
                    }
                }
            }
            while let Some(done) = in_flight.take() {
                stored.extend(done);
                if let Some(batch) = sends.finished() {
                    store(batch, &mut in_flight);
                }
            }
            prop_assert!(sends.is_empty());
            prop_assert_eq!(stored, sent);
        }
    }
}
