from __future__ import annotations

from django.urls import path

from exampleproject import views
from usageflow.integrations.django import stripe_webhook_view

urlpatterns = [
    path("v1/exports", views.export, name="exports"),
    path("v1/chat/<int:chat_id>", views.chat, name="chat"),
    path("v1/summaries", views.summarize, name="summaries"),
    path("health", views.health, name="health"),
    # Stripe checkouts and subscriptions move users between plans (docs/stripe.md).
    path("stripe/webhook", stripe_webhook_view(), name="stripe-webhook"),
]
