//! Keeping a split CRLF's LF where a parser would put it, as the stages
//! of a chain drop and add events.

use super::{SseChunk, SseEvent};

/// Keeps the line ends between a stage's events where a parser reading
/// the stage's bytes would put them, so that the next stage gets the very
/// events it would parse from them.
///
/// A CRLF split between two upstream chunks leaves its LF at the start of
/// the next event's `raw`. Once a stage drops, adds or rewrites the events
/// around it, a parser would read that LF otherwise: as the end of the
/// previous event when it ends with CR in the same piece, or as a blank
/// line of its own when no CR precedes it. Streams with one kind of line
/// end are aligned exactly; with mixed ones, a lone blank line after an
/// event ended by CR in an earlier piece may stay an event of its own where
/// a parser would begin the next event with it (the bytes are the same).
#[derive(Debug, Default)]
pub struct LineEnds {
    /// The last byte handed on was CR.
    after_cr: bool,
}

impl LineEnds {
    /// Aligns the events of `piece`, the next piece this stage hands on.
    pub fn align(&mut self, piece: &mut SseChunk) {
        let events = &mut piece.events;
        let mut i = 0;
        while i < events.len() {
            let (before, rest) = events.split_at_mut(i);
            match self.leading_lf(&mut rest[0], before.last_mut()) {
                Lf::Moved if rest[0].raw.is_empty() => {
                    events.remove(i);
                    self.after_cr = false;
                    continue;
                }
                Lf::Split => {
                    events.insert(i, blank_line());
                    i += 1;
                }
                Lf::Moved | Lf::Stays => {}
            }
            self.after_cr = events[i].raw.last() == Some(&b'\r');
            i += 1;
        }
        if let Some(mut last) = piece.last.take() {
            if !self.after_cr && last.raw == b"\n" {
                // A blank line: a whole event.
                events.push(last);
            } else {
                if self.leading_lf(&mut last, events.last_mut()) == Lf::Split {
                    events.push(blank_line());
                }
                piece.last = Some(last).filter(|e| !e.raw.is_empty());
            }
        }
        let tail = [
            piece.last.as_ref().map_or(&[][..], |e| &e.raw),
            &piece.unparsed,
            events.last().map_or(&[][..], |e| &e.raw),
        ];
        if let Some(&byte) = tail.iter().find_map(|bytes| bytes.last()) {
            self.after_cr = byte == b'\r';
        }
    }

    /// Places the LF that may begin `event`, given the event before it in
    /// the same piece.
    fn leading_lf(&self, event: &mut SseEvent, previous: Option<&mut SseEvent>) -> Lf {
        if event.raw.first() != Some(&b'\n') {
            return Lf::Stays;
        }
        match previous {
            Some(previous) if self.after_cr => {
                event.raw.remove(0);
                previous.raw.push(b'\n');
                Lf::Moved
            }
            // The previous piece ended with CR: the LF begins this event.
            None if self.after_cr => Lf::Stays,
            _ if event.raw.len() > 1 => {
                event.raw.remove(0);
                Lf::Split
            }
            _ => Lf::Stays,
        }
    }
}

/// What became of an event's leading LF.
#[derive(Debug, PartialEq, Eq)]
enum Lf {
    /// It stays with the event.
    Stays,
    /// It ends the previous event (the LF of its CRLF).
    Moved,
    /// It is a blank line of its own, before the event.
    Split,
}

fn blank_line() -> SseEvent {
    SseEvent {
        raw: vec![b'\n'],
        ..SseEvent::default()
    }
}
