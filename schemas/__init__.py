"""Message contracts of the reference application (an order flow)."""

from marshmallow import fields

from microbus import PubSubMessageSchema, schema

__all__ = ["OrderPlaced", "PaymentCaptured"]


@schema
class OrderPlaced(PubSubMessageSchema):
    """A customer placed an order."""

    MEDIA_TYPE = "application/vnd.microbus.order.placed"

    order_id = fields.String(required=True)
    customer_id = fields.String(required=False)
    total_cents = fields.Integer(required=False)


@schema
class PaymentCaptured(PubSubMessageSchema):
    """The payment of an order was captured."""

    MEDIA_TYPE = "application/vnd.microbus.payment.captured"

    order_id = fields.String(required=True)
    amount_cents = fields.Integer(required=True)
