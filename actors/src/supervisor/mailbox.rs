//! Mailbox depth of a supervised actor: actix keeps no count of the
//! messages waiting for an actor, so every message the supervisor's
//! handles send carries a ticket that counts it from the moment it is
//! queued until its handler returns (or the mailbox is dropped with it
//! unhandled, when the instance ends).
//!
//! The count covers what reaches the actor through its [`ChildHandle`]
//! (health pings, stop and fault messages): the request paths never wait
//! on a mailbox (they read shared state, and queue work on the models'
//! own queues). A depth that stays above zero means the actor is stuck in
//! a handler while pings pile up behind it.
//!
//! [`ChildHandle`]: super::ChildHandle

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::dev::RecipientRequest;
use actix::{Message, Recipient};

/// Messages queued for one actor instance and not yet handled.
#[derive(Debug, Clone, Default)]
pub struct MailboxDepth(Arc<AtomicUsize>);

impl MailboxDepth {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn ticket(&self) -> Ticket {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ticket(self.0.clone())
    }
}

/// One counted message; dropped with the message, after its handler.
#[derive(Debug)]
struct Ticket(Arc<AtomicUsize>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A message with its ticket; the actor answers it as it answers the bare
/// message (the `supervised_actor!` macro implements that).
#[derive(Debug)]
pub struct Counted<M> {
    pub message: M,
    _ticket: Ticket,
}

impl<M: Message> Message for Counted<M> {
    type Result = M::Result;
}

/// A recipient whose messages are counted in its actor's mailbox depth.
pub struct CountedRecipient<M>
where
    M: Message + Send,
    M::Result: Send,
{
    recipient: Recipient<Counted<M>>,
    depth: MailboxDepth,
}

impl<M> Clone for CountedRecipient<M>
where
    M: Message + Send,
    M::Result: Send,
{
    fn clone(&self) -> Self {
        Self { recipient: self.recipient.clone(), depth: self.depth.clone() }
    }
}

impl<M> CountedRecipient<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    pub fn new(recipient: Recipient<Counted<M>>, depth: MailboxDepth) -> Self {
        Self { recipient, depth }
    }

    pub fn send(&self, message: M) -> RecipientRequest<Counted<M>> {
        self.recipient.send(Counted { message, _ticket: self.depth.ticket() })
    }

    pub fn do_send(&self, message: M) {
        self.recipient.do_send(Counted { message, _ticket: self.depth.ticket() });
    }

    /// The messages waiting in (or being handled from) the mailbox.
    pub fn depth(&self) -> usize {
        self.depth.get()
    }
}

#[cfg(test)]
mod tests {
    use actix::{Actor, AsyncContext, Context, Handler};

    use super::*;

    #[derive(Message)]
    #[rtype(result = "u32")]
    struct Add(u32);

    #[derive(Default)]
    struct Adder {
        total: u32,
    }

    impl Actor for Adder {
        type Context = Context<Self>;
    }

    impl Handler<Counted<Add>> for Adder {
        type Result = u32;
        fn handle(&mut self, counted: Counted<Add>, _: &mut Self::Context) -> u32 {
            self.total += counted.message.0;
            self.total
        }
    }

    #[actix_rt::test]
    async fn queued_messages_are_counted_until_handled() {
        // The context is made but its actor not started yet: the messages
        // wait in its mailbox.
        let context = Context::<Adder>::new();
        let adder = CountedRecipient::new(context.address().recipient(), MailboxDepth::default());
        for value in 1..=3 {
            adder.do_send(Add(value));
        }
        let last = adder.send(Add(4));
        assert_eq!(adder.depth(), 4);

        let address = context.run(Adder::default());
        assert_eq!(last.await.unwrap(), 10, "every message was handled, in order");
        assert_eq!(adder.depth(), 0);
        drop(address);
    }

    #[actix_rt::test]
    async fn messages_dropped_unhandled_leave_the_count() {
        let context = Context::<Adder>::new();
        let adder = CountedRecipient::new(context.address().recipient(), MailboxDepth::default());
        adder.do_send(Add(1));
        adder.do_send(Add(2));
        assert_eq!(adder.depth(), 2);
        // The instance ends without running: its mailbox goes with it.
        drop(context);
        assert_eq!(adder.depth(), 0);
    }
}
