"""Message contracts of the reference application (an order flow)."""

from marshmallow import fields

from microbus import PubSubMessageSchema, schema

__all__ = ["OrderPlaced", "PaymentCaptured", "ReserveInventory", "ChargePayment", "SendNotification"]


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


@schema
class ReserveInventory(PubSubMessageSchema):
    """Reserve the items of an order (a fulfilment target)."""

    MEDIA_TYPE = "application/vnd.microbus.inventory.reserve"

    order_id = fields.String(required=True)
    quantity = fields.Integer(required=True)


@schema
class ChargePayment(PubSubMessageSchema):
    """Charge the customer for an order (a fulfilment target)."""

    MEDIA_TYPE = "application/vnd.microbus.payment.charge"

    order_id = fields.String(required=True)
    amount_cents = fields.Integer(required=True)


@schema
class SendNotification(PubSubMessageSchema):
    """Tell the customer their order is on its way (a fulfilment target)."""

    MEDIA_TYPE = "application/vnd.microbus.notification.send"

    order_id = fields.String(required=True)
    customer_id = fields.String(required=True)
