//! The names of a room's Redis keys and channel (ARCHITECTURE.md has the
//! table). The room sits in a hash tag, `{room}`, so a room's keys and its
//! channel hash to one Redis Cluster slot and every script touches one node.

use crate::fields::{Ref, Room, User};

#[derive(Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn meta(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:meta", self.prefix)
    }

    pub fn stream(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:stream", self.prefix)
    }

    pub fn fold(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:fold", self.prefix)
    }

    pub fn reads(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:read", self.prefix)
    }

    pub fn presence(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:presence", self.prefix)
    }

    /// How many entries of the presence set each user has.
    pub fn presence_counts(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:present", self.prefix)
    }

    pub fn channel(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:live", self.prefix)
    }

    /// The refs remembered in the room: field `ref_field` → `id ts`.
    pub fn refs(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:refs", self.prefix)
    }

    /// The room's refs in the order they were remembered, for forgetting
    /// them in that order.
    pub fn ref_order(&self, room: &Room) -> String {
        format!("{}:{{{room}}}:ref-order", self.prefix)
    }

    pub fn room_of_channel(&self, channel: &str) -> Option<Room> {
        let inner = channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:live")?;
        Room::parse(inner).ok()
    }
}

/// A user's ref as a field of the room's refs hash. The user's length comes
/// first so that no user and ref pair can spell the same field as another.
pub fn ref_field(user: &User, reference: &Ref) -> String {
    let user = user.as_str();
    format!("{}:{user}:{}", user.len(), reference.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_room_in_a_hash_tag() {
        let keys = Keys::new("parlor");
        let room = Room::parse("general").unwrap();
        assert_eq!(keys.meta(&room), "parlor:{general}:meta");
        assert_eq!(keys.stream(&room), "parlor:{general}:stream");
        assert_eq!(keys.channel(&room), "parlor:{general}:live");
        let user = User::parse("a:b").unwrap();
        assert_eq!(keys.refs(&room), "parlor:{general}:refs");
        assert_eq!(
            ref_field(&user, &Ref::parse("c").unwrap()),
            "3:a:b:c",
            "not the same as user a with ref b:c"
        );
        assert_eq!(keys.room_of_channel("parlor:{general}:live"), Some(room));
        assert_eq!(keys.room_of_channel("other:{general}:live"), None);
    }
}
