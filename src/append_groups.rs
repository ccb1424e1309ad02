//! The appends of each room waiting on this instance, taken a group at a
//! time, so that one call of the append script stores the sends of many
//! connections: a call costs Redis several times what one more event in it
//! does (the epoch, the keys' retention, the script itself), and one
//! connection's batch rarely holds more than one send per room.
//!
//! A room's groups are stored one after another, each in the order its
//! appends came, so every connection's sends keep their order. Appends
//! whose every event has a ref and the others go in separate groups: only
//! the first kind is retried after an error that may have stored them
//! (`RedisLog::append_retrying`). This is the rule, without I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::fields::Room;
use crate::lock::lock;
use crate::log::{Append, Outcome, Seen, StoreError};

/// Most events in one group; an append larger than that goes alone.
const GROUP_EVENTS: usize = 256;

/// Where an append's outcomes go.
pub type Answer = async_channel::Sender<Result<Vec<Outcome>, StoreError>>;

/// One append waiting for its group.
pub struct Waiting {
    pub batch: Vec<Append>,
    pub known: Vec<Seen>,
    pub answer: Answer,
}

/// Appends stored in one call: their events in order, what their callers
/// saw, and how many events each caller gets back.
pub struct Group {
    pub batch: Vec<Append>,
    pub known: Vec<Seen>,
    answers: Vec<(Answer, usize)>,
}

impl Group {
    /// Takes one more append in, after the ones it holds.
    fn add(&mut self, waiting: Waiting) {
        self.answers.push((waiting.answer, waiting.batch.len()));
        self.batch.extend(waiting.batch);
        for seen in waiting.known {
            if !self.known.contains(&seen) {
                self.known.push(seen);
            }
        }
    }

    /// Hands each caller its part of the outcomes, or the error.
    pub fn answer(self, result: Result<Vec<Outcome>, StoreError>) {
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (answer, count) in self.answers {
                    let _ = answer.try_send(Ok(outcomes.by_ref().take(count).collect()));
                }
            }
            Err(error) => {
                for (answer, _) in self.answers {
                    let _ = answer.try_send(Err(StoreError(error.0.clone())));
                }
            }
        }
    }
}

/// The waiting appends of every room with a group being stored.
#[derive(Default)]
pub struct Groups {
    rooms: Mutex<HashMap<Room, VecDeque<Waiting>>>,
}

impl Groups {
    /// Queues an append; true when no group of its room is being stored,
    /// so that the caller starts storing them (`next` until it says none).
    pub fn push(&self, room: &Room, waiting: Waiting) -> bool {
        let mut rooms = lock(&self.rooms);
        match rooms.get_mut(room) {
            Some(queue) => {
                queue.push_back(waiting);
                false
            }
            None => {
                rooms.insert(room.clone(), VecDeque::from([waiting]));
                true
            }
        }
    }

    /// The room's next group, oldest appends first; `None` when nothing
    /// waits, and the room is then idle until the next `push`.
    pub fn next(&self, room: &Room) -> Option<Group> {
        let mut rooms = lock(&self.rooms);
        let queue = rooms.get_mut(room)?;
        let Some(first) = queue.pop_front() else {
            rooms.remove(room);
            return None;
        };
        let all_refs = |w: &Waiting| w.batch.iter().all(|a| a.reference.is_some());
        let kind = all_refs(&first);
        let mut group = Group {
            batch: Vec::new(),
            known: Vec::new(),
            answers: Vec::new(),
        };
        group.add(first);
        while let Some(waiting) = queue.front() {
            if all_refs(waiting) != kind || group.batch.len() + waiting.batch.len() > GROUP_EVENTS {
                break;
            }
            group.add(queue.pop_front().expect("front exists"));
        }
        Some(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{Ref, Text, User};
    use crate::log::{Change, Epoch, Stored};

    fn append(text: &str, reference: Option<&str>) -> Append {
        Append {
            user: User::parse("u").unwrap(),
            change: Change::Message(Text::parse(text.into(), 100).unwrap()),
            reference: reference.map(|r| Ref::parse(r).unwrap()),
            moderator: false,
        }
    }

    fn waiting(
        texts: &[&str],
        reference: bool,
    ) -> (
        Waiting,
        async_channel::Receiver<Result<Vec<Outcome>, StoreError>>,
    ) {
        let (answer, answered) = async_channel::bounded(1);
        let batch = texts
            .iter()
            .map(|t| append(t, reference.then_some(*t)))
            .collect();
        (
            Waiting {
                batch,
                known: Vec::new(),
                answer,
            },
            answered,
        )
    }

    fn stored(id: u64) -> Outcome {
        Ok(Stored {
            epoch: Epoch::from("e"),
            id: Some(id),
            ts: 0,
        })
    }

    #[test]
    fn appends_of_a_room_go_in_order_in_groups_of_one_kind() {
        let groups = Groups::default();
        let room = Room::parse("r").unwrap();
        let (a, a_answer) = waiting(&["a1", "a2"], true);
        let (b, b_answer) = waiting(&["b1"], true);
        let (c, _) = waiting(&["c1"], false);
        assert!(groups.push(&room, a), "the first starts the room's groups");
        assert!(!groups.push(&room, b));
        assert!(!groups.push(&room, c));
        let group = groups.next(&room).unwrap();
        let texts: Vec<String> = group
            .batch
            .iter()
            .map(|a| a.reference.as_ref().unwrap().as_str().to_owned())
            .collect();
        assert_eq!(
            texts,
            ["a1", "a2", "b1"],
            "one group, in order; c has no ref"
        );
        group.answer(Ok(vec![stored(1), stored(2), stored(3)]));
        let ids = |outcomes: Vec<Outcome>| -> Vec<Option<u64>> {
            outcomes.into_iter().map(|o| o.unwrap().id).collect()
        };
        assert_eq!(
            ids(a_answer.try_recv().unwrap().unwrap()),
            [Some(1), Some(2)]
        );
        assert_eq!(ids(b_answer.try_recv().unwrap().unwrap()), [Some(3)]);
        assert_eq!(groups.next(&room).unwrap().batch.len(), 1, "then c alone");
        assert!(groups.next(&room).is_none());
        let (d, _) = waiting(&["d1"], false);
        assert!(groups.push(&room, d), "an idle room starts again");
    }

    /// What a room's caller does: queue an append of `events` (all with
    /// refs or none), or, as the room's storing task, take the next group.
    #[derive(Debug, Clone)]
    enum Step {
        Push {
            room: usize,
            events: usize,
            refs: bool,
        },
        Next {
            room: usize,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, 1..=300usize, any::<bool>()).prop_map(|(room, events, refs)| Step::Push {
                room,
                events,
                refs
            }),
            (0..3usize).prop_map(|room| Step::Next { room }),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        /// Against a model (a queue of appends per room and whether the room
        /// has a storing task): `push` starts a task exactly when the room
        /// has none; each group is the longest run from the front of the
        /// room's queue that is of one kind and within GROUP_EVENTS (or one
        /// larger append alone), its events in order; each caller gets back
        /// exactly its own outcomes.
        #[test]
        fn groups_follow_the_model(steps in proptest::collection::vec(step(), 1..60)) {
            let groups = Groups::default();
            let rooms: Vec<Room> = (0..3).map(|r| Room::parse(&format!("r{r}")).unwrap()).collect();
            let mut queues: Vec<VecDeque<(usize, usize, bool)>> = vec![VecDeque::new(); 3];
            let mut active = [false; 3];
            let mut answers = Vec::new();
            for step in steps {
                match step {
                    Step::Push { room, events, refs } => {
                        let id = answers.len();
                        let texts: Vec<String> = (0..events).map(|i| format!("{id}-{i}")).collect();
                        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                        let (w, answered) = waiting(&texts, refs);
                        answers.push(answered);
                        prop_assert_eq!(groups.push(&rooms[room], w), !active[room]);
                        active[room] = true;
                        queues[room].push_back((id, events, refs));
                    }
                    Step::Next { room } => {
                        let got = groups.next(&rooms[room]);
                        let queue = &mut queues[room];
                        let Some(&(_, _, kind)) = queue.front() else {
                            prop_assert!(got.is_none());
                            active[room] = false;
                            continue;
                        };
                        let mut want = Vec::new();
                        let mut total = 0;
                        while let Some(&(id, events, refs)) = queue.front() {
                            if !want.is_empty() && (refs != kind || total + events > GROUP_EVENTS) {
                                break;
                            }
                            queue.pop_front();
                            want.push((id, events));
                            total += events;
                        }
                        let group = got.expect("a group while appends wait");
                        let texts: Vec<String> = group.batch.iter().map(|a| match &a.change {
                            Change::Message(text) => text.as_str().to_owned(),
                            _ => unreachable!(),
                        }).collect();
                        let expected: Vec<String> = want.iter()
                            .flat_map(|&(id, events)| (0..events).map(move |i| format!("{id}-{i}")))
                            .collect();
                        prop_assert_eq!(texts, expected);
                        group.answer(Ok((0..total as u64).map(stored).collect()));
                        let mut next_id = 0;
                        for (id, events) in want {
                            let outcomes = answers[id].try_recv().unwrap().unwrap();
                            let ids: Vec<Option<u64>> = outcomes.into_iter().map(|o| o.unwrap().id).collect();
                            let own: Vec<Option<u64>> = (next_id..next_id + events as u64).map(Some).collect();
                            prop_assert_eq!(ids, own);
                            next_id += events as u64;
                        }
                    }
                }
            }
        }
    }
}
